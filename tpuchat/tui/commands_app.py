"""What each slash command of commands.COMMANDS does in the chat UI: the
App's `cmd_<name>(arg)` methods, and the image attachment they share with F5."""

import os
from pathlib import Path
from typing import Optional

from ..chat.conversation import Attachment
from ..errors import ImageError
from .screens import ImagePicker
from .widgets import AttachmentChip, ImageView


class SlashCommands:
    """Mixed into TpuchatApp (self is the App)."""

    async def cmd_new(self, arg: str) -> None:
        await self.action_new_conversation()

    async def cmd_clear(self, arg: str) -> None:
        if not self._busy():
            self.ctl.clear()
            await self.chat.remove_children()
            self._show_welcome()

    def cmd_model(self, arg: str) -> None:
        if not arg:
            self.action_pick_model()
        elif not self._busy():
            self.open_model(os.path.expanduser(arg), self.devids)

    def cmd_devices(self, arg: str) -> None:
        if not arg:
            self.action_pick_devices()
        elif not self._busy():
            self.set_devices(arg)

    def cmd_system(self, arg: str) -> None:
        self.ctl.set_system(arg)
        self.notify("System prompt " + ("set" if arg else "cleared") + " for this conversation")

    def cmd_set(self, arg: str) -> None:
        if not arg:
            s = self.ctl.effective_settings()
            from .. import config as cfg

            self.notify(" ".join(f"{k}={getattr(s, k)}" for k in cfg.GEN_KEYS), timeout=10)
            return
        try:
            s = self.ctl.parse_set(arg)
        except ValueError as e:
            self.notify(str(e), severity="error", timeout=8)
            return
        self.apply_settings(s, "conversation")

    def cmd_settings(self, arg: str) -> None:
        self.action_settings()

    def cmd_export(self, arg: str) -> None:
        if self.conv_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        try:
            written = self.ctl.export(arg)
        except OSError as e:
            self.notify(f"Export failed: {e}", severity="error")
            return
        self.notify("Exported to " + ", ".join(written), timeout=8)

    def cmd_help(self, arg: str) -> None:
        self.action_help()

    async def cmd_retry(self, arg: str) -> None:
        await self.action_retry()

    def cmd_rename(self, arg: str) -> None:
        if self.conv_id is None:
            self.notify("Nothing to rename yet: the conversation is saved with its first message.")
        elif arg:
            self.ctl.rename(self.conv_id, arg)
            self.refresh_sidebar()

    def cmd_copy(self, arg: str) -> None:
        self.action_copy_last()

    def cmd_chats(self, arg: str) -> None:
        self.action_toggle_sidebar()

    async def cmd_quit(self, arg: str) -> None:
        await self.action_quit()

    def cmd_image(self, arg: str) -> None:
        """On an error the command stays in the input for correcting."""
        typed = self.prompt.text.strip().startswith("/image")
        if arg.lower() in ("off", "none", "remove", "clear"):
            self._set_pending(None)
            self.notify("Image removed from the next message")
        elif arg and not self.attach_image(arg):
            return
        elif not arg:
            self.action_attach_image()
        if typed:
            self.prompt.load_text("")

    # -- images ---------------------------------------------------------------------------------
    def _set_pending(self, att: Optional[Attachment]) -> None:
        self.pending_image = att
        self._q("#attachment", AttachmentChip).show_image(
            ImageView.of_attachment(att, with_preview=False) if att is not None else None)

    def attach_image(self, path: str) -> bool:
        """Attach an image file to the next message; False (and a one-line error) if it cannot be."""
        from ..chat.session import attach_image

        path = os.path.expanduser(path.strip().strip("'\""))
        if self.model is not None and not self.model.desc.has_vision:
            self.notify(f"{self.model.name} is a text-only model: it cannot take images (F2 opens a vision "
                        "model).", severity="error", timeout=8)
            return False
        if self.pending_image is not None:
            self.notify(f"The next message already has an image ({self.pending_image.name}) and the model takes "
                        "one image per message: /image off removes it first.", severity="error", timeout=8)
            return False
        try:
            att = attach_image(path)
        except ImageError as e:
            self.notify(str(e), severity="error", timeout=8)
            return False
        self._set_pending(att)
        self.image_dir = str(Path(att.path).parent) if att.path else self.image_dir
        return True

    def action_attach_image(self) -> None:
        def done(path: Optional[str]) -> None:
            if path:
                self.attach_image(path)
            self.prompt.focus()

        self.push_screen(ImagePicker(self.image_dir or os.getcwd()), done)
