"""What the UI needs from the rest of tpuchat, behind one small object so
tests can hand the app a scripted engine instead of the real one."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from ..runtime.protocol import ModelDesc


class Backend:
    """Opens models, lists devices, describes bmodels (the real thing)."""

    def __init__(self, lib_dir: Optional[str] = None, tokenizer_dir: Optional[str] = None,
                 shared_prefix: Optional[str] = None):
        self.lib_dir = lib_dir
        self.tokenizer_dir = tokenizer_dir
        self.shared_prefix = shared_prefix  # system prompt kept on the device for every conversation
        self._desc_cache: Dict[str, "ModelDesc"] = {}

    def open_model(self, path: str, devids: Sequence[int]):
        from ..chat.session import ModelSpec, open_chat_model

        return open_chat_model(ModelSpec(path, list(devids), self.lib_dir, self.tokenizer_dir, self.shared_prefix))

    def devices(self, model=None) -> dict:
        """{kind, path, count, devices: [{devid, mem_total_mb, mem_used_mb, tpu_util}]}"""
        from ..runtime.client import EngineClient

        client = getattr(model, "client", None)
        if client is not None:
            return client.devices(self.lib_dir)
        with EngineClient() as c:
            return c.devices(self.lib_dir)

    def describe(self, path: str) -> "ModelDesc":
        """What the runtime reads from the bmodel (opens it on device 0 in a short-lived worker)."""
        key = str(Path(path).resolve())
        if key not in self._desc_cache:
            from ..runtime.client import EngineClient

            with EngineClient() as c:
                self._desc_cache[key] = c.open(path, [0], self.lib_dir)
        return self._desc_cache[key]

    def tokenizer_found(self, path: str) -> Optional[str]:
        from ..errors import TokenizerError
        from ..text.loader import find_tokenizer_dir

        try:
            return str(find_tokenizer_dir(self.tokenizer_dir, path))
        except TokenizerError:
            return None

    def file_facts(self, path: str) -> dict:
        from ..errors import ModelError
        from ..runtime.bmodel_file import check_bmodel_file

        try:
            f = check_bmodel_file(path)
            return {"size": f.size, "chip": f.chip, "toolchain": f.toolchain, "error": None}
        except ModelError as e:
            return {"size": 0, "chip": None, "toolchain": None, "error": str(e)}


def find_bmodels(dirs: Sequence[str], limit: int = 200) -> List[str]:
    """.bmodel files in the given dirs (and one level below), sorted, no duplicates."""
    seen, out = set(), []
    for d in dirs:
        p = Path(os.path.expanduser(d))
        if not p.is_dir():
            continue
        try:
            cands = sorted(p.glob("*.bmodel")) + sorted(p.glob("*/*.bmodel"))
        except OSError:
            continue
        for f in cands:
            key = str(f.resolve())
            if key not in seen and f.is_file():
                seen.add(key)
                out.append(str(f))
            if len(out) >= limit:
                return out
    return out


class FakeBackend(Backend):
    """For tests and demos: models are FakeModel instances from a factory."""

    def __init__(self, factory: Callable[[str, Sequence[int]], object], devices: Optional[dict] = None,
                 descs: Optional[Dict[str, "ModelDesc"]] = None, open_error: Optional[Exception] = None):
        super().__init__()
        self.factory = factory
        self._devices = devices or {
            "kind": "fake", "path": "", "count": 2,
            "devices": [{"devid": 0, "mem_total_mb": 12288, "mem_used_mb": 5230, "tpu_util": 37},
                        {"devid": 1, "mem_total_mb": 12288, "mem_used_mb": 310, "tpu_util": 0}],
        }
        self.descs = descs or {}
        self.open_error = open_error
        self.opened: List[tuple] = []

    def open_model(self, path: str, devids: Sequence[int]):
        self.opened.append((path, list(devids)))
        if self.open_error is not None:
            raise self.open_error
        return self.factory(path, devids)

    def devices(self, model=None) -> dict:
        return self._devices

    def describe(self, path: str) -> "ModelDesc":
        from .fake import fake_desc

        return self.descs.get(path) or fake_desc(Path(path).name)

    def tokenizer_found(self, path: str) -> Optional[str]:
        return "config/ beside the bmodel"

    def file_facts(self, path: str) -> dict:
        d = self.describe(path)
        return {"size": d.file_size, "chip": "BM1684X", "toolchain": "1.30.2", "error": None}
