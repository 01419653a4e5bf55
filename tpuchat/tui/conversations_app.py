"""The conversations in the chat UI: starting, reopening, renaming and deleting
them (the controller keeps the data; this shows it), and the hint an empty chat shows."""

from pathlib import Path
from typing import Optional

from rich.markup import escape
from textual.widgets import Static

from ..chat.statsline import format_stats
from .screens import Confirm, TextPrompt
from .widgets import ConversationList, ImageView, MessageBox


class Conversations:
    """Mixed into TpuchatApp (self is the App)."""

    async def action_new_conversation(self) -> None:
        if not self._busy():
            self.ctl.new_conversation()
            await self._show_conversation([])

    async def open_conversation(self, conv_id: int) -> None:
        if not self._busy():
            pairs = self.ctl.open_conversation(conv_id)
            if pairs is not None:
                await self._show_conversation(pairs)

    async def _show_conversation(self, pairs) -> None:
        await self.chat.remove_children()
        boxes = [MessageBox("user", m.content, image=ImageView.of_attachment(cm.attachment) if cm.attachment else None)
                 if m.role == "user" else
                 MessageBox("assistant", m.content, title=m.model or "Assistant",
                            footer=format_stats(m.stats, "footer", m.stopped, m.error)) for m, cm in pairs]
        if boxes:
            await self.chat.mount_all(boxes)
        self._show_welcome()
        self.chat.scroll_end(animate=False)
        self.refresh_sidebar()
        self.prompt.focus()

    def action_rename_conversation(self) -> None:
        conv_id = self._q(ConversationList).highlighted_id or self.conv_id
        if conv_id is None:
            self.notify("Nothing to rename yet: the conversation is saved with its first message.")
            return
        c = self.store.get_conversation(conv_id)

        def done(title: Optional[str]) -> None:
            if title and title.strip():
                self.ctl.rename(conv_id, title.strip())
                self.refresh_sidebar()

        self.push_screen(TextPrompt("Rename conversation", c.title if c else ""), done)

    def action_delete_conversation(self) -> None:
        conv_id = self._q(ConversationList).highlighted_id or self.conv_id
        if conv_id is None:
            return
        c = self.store.get_conversation(conv_id)

        async def done(yes: Optional[bool]) -> None:
            if yes and not (conv_id == self.conv_id and self._busy()):
                if conv_id == self.conv_id:
                    await self.action_new_conversation()
                self.store.delete_conversation(conv_id)
                self.refresh_sidebar()

        self.push_screen(Confirm(f"Delete “{c.title if c else conv_id}”?"), done)

    def _show_welcome(self) -> None:
        """The hint shown while the chat is empty (updated in place: a removed
        widget stays a child until the next refresh)."""
        if any(w.id != "welcome" for w in self.chat.children) or (self.model is None and self.load_error):
            return
        if self.model is not None:
            d = self.model.desc
            text = (f"[b]{escape(self.model.name)}[/b] is ready (S {d.seq_len} / L {d.kv_len}). "
                    "Type a message and press Enter."
                    + (" It sees images: /image PATH or F5 attaches one." if d.has_vision else "")
                    + "\n[dim]F1 help · F2 model · F4 settings · Ctrl+B conversations[/dim]")
        elif self.model_path:
            text = f"Opening [b]{escape(Path(self.model_path).name)}[/b]…"
        else:
            text = "No model open. Press [b]F2[/b] to pick a .bmodel (or start with [b]tpuchat --model FILE[/b])."
        existing = list(self.chat.query("#welcome"))
        if existing:
            existing[0].update(text)
        else:
            self.chat.mount(Static(text, id="welcome"))

    def _drop_welcome(self) -> None:
        for w in self.chat.query("#welcome"):
            w.remove()
