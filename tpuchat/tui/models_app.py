"""Which model runs on which devices: opening one in the background (the UI
stays usable while it loads), the model and device pickers, and what the
chat says when a model does not open."""

import os
from pathlib import Path
from typing import List, Optional, Sequence

from rich.markup import escape
from textual import work

from ..chat.controller import error_text
from ..errors import TpuchatError
from .screens import DevicePicker, ModelPicker
from .status import UiState


class ModelSwitching:
    """Mixed into TpuchatApp (self is the App)."""

    def open_model(self, path: str, devids: Sequence[int]) -> None:
        self.state = UiState.LOADING
        self.load_error = None
        self._load_model(path, list(devids))

    @work(thread=True, exclusive=True, group="load")
    def _load_model(self, path: str, devids: List[int]) -> None:
        try:
            model = self.backend.open_model(path, devids)
        except Exception as e:  # noqa: BLE001 - show anything, never exit
            self.call_from_thread(self._model_failed, path, devids, error_text(e), getattr(e, "log_tail", ""))
            return
        old = self.model
        self.call_from_thread(self._model_ready, model, path, devids)
        if old is not None and old is not model:
            try:
                old.close()
            except Exception:  # noqa: BLE001
                pass

    def _model_ready(self, model, path: str, devids: List[int]) -> None:
        self.model, self.model_path, self.devids = model, path, list(devids)
        self.ctl.set_model(model)
        self.state = UiState.IDLE
        self.load_error = None
        self._show_welcome()
        pinned = getattr(model, "pinned", None) or {}
        extra = (f"; shared prefix of {pinned['tokens']} tokens kept on the device ({pinned['seconds']:.1f} s)"
                 if pinned.get("tokens") else "")
        self.notify(f"{model.name} ready on device {','.join(map(str, devids))}{extra}")

    def _model_failed(self, path: str, devids: List[int], msg: str, tail: str) -> None:
        self.load_error = msg
        self.state = UiState.ERROR if self.model is None else UiState.IDLE
        self._drop_welcome()
        what = (f"Could not open [b]{escape(Path(path).name)}[/b] on device {','.join(map(str, devids))}:\n"
                f"{escape(msg)}")
        hint = ("\n[dim]What now: F2 picks another model, F3 other devices; `tpuchat doctor` checks the runtime."
                + (" The previous model is still open." if self.model is not None else "") + "[/dim]")
        self.show_error(what + hint, tail)

    def model_dirs(self) -> List[str]:
        dirs = [os.getcwd()] + self.extra_model_dirs + list(self.defaults.model_dirs)
        if self.model_path:
            dirs.append(str(Path(self.model_path).expanduser().resolve().parent))
        return dirs

    def action_pick_model(self) -> None:
        if not self._busy():
            self.push_screen(ModelPicker(self.backend, self.model_dirs(), self.model_path),
                             lambda path: path and self.open_model(path, self.devids))

    def action_pick_devices(self) -> None:
        if self._busy():
            return
        needed = self.model.desc.num_device if self.model is not None else 1
        model = self.model if self.state == UiState.IDLE else None
        self.push_screen(DevicePicker(self.backend, model, needed, self.devids), self._devices_chosen)

    def _devices_chosen(self, ids: Optional[List[int]]) -> None:
        if ids and self.model_path:
            self.open_model(self.model_path, ids)
        elif ids:
            self.devids = ids

    def set_devices(self, text: str) -> None:
        from ..options import parse_devids

        try:
            ids = parse_devids(text)
        except TpuchatError as e:
            self.notify(str(e), severity="error")
            return
        needed = self.model.desc.num_device if self.model is not None else len(ids)
        if len(ids) != needed:
            self.notify(f"This bmodel was compiled for {needed} device{'s' if needed != 1 else ''}, "
                        f"but {len(ids)} were given.", severity="error", timeout=8)
            return
        self._devices_chosen(ids)
