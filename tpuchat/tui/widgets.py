"""The chat UI's widgets, one per concern: conversation list, chat view (one
MessageBox per message), the prompt input and the status bar."""

import time
from typing import List, Optional

from rich.markup import escape
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.widgets import Input, Label, ListItem, ListView, Markdown, Static, TextArea

from ..chat.statsline import format_stats
from .markdown_stream import StreamingMarkdown
from .frozen import FrozenRows, freeze_contents, under_mouse
from .growing import GrowingScroll, GrowingWidget


def fmt_stats(stats, stopped: bool = False, error: Optional[str] = None, model: Optional[str] = None,
              live: bool = False) -> str:
    """An answer's footer line, in the one stats wording (chat/statsline.py)."""
    return format_stats(stats, "footer", stopped, error, model, live)


class MessageBox(GrowingWidget, Vertical):
    """One message.  Assistant answers render as Markdown and can grow while streaming."""

    def __init__(self, role: str, text: str = "", footer: str = "", title: str = "", image=None, **kw):
        super().__init__(classes=f"msg {role}", **kw)
        self.role = role
        self.text = text
        self.image = image  # ImageView of an attached image (user messages)
        self._footer_text = footer
        self._title = title or ("You" if role == "user" else "Assistant")
        self._stream_parts: List[str] = []
        self._freeze_tries = 0

    def compose(self) -> ComposeResult:
        yield Label(escape(self._title), classes="msg-title")
        if self.image is not None:
            yield Static(self.image.chip, classes="msg-chip")
            if self.image.preview is not None:
                yield Static(self.image.preview, classes="msg-preview")
        if self.role == "user":
            yield Static(escape(self.text), classes="msg-body", markup=True)
        elif self.role == "error":
            yield Static(self.text, classes="msg-body")
        else:
            yield Markdown(self.text, classes="msg-body")
        yield Static(self._footer_text, classes="msg-footer")

    @property
    def body(self):
        return self.query_one(".msg-body")

    async def append_text(self, chunk: str) -> None:
        """Add streamed text (called 8 times a second with what arrived since).  The first call
        swaps the body for a StreamingMarkdown, which redraws only the unfinished tail."""
        if not chunk:
            return
        self.text += chunk
        body = self.body
        if not isinstance(body, StreamingMarkdown):
            stream = StreamingMarkdown(classes="msg-body msg-stream")
            await self.mount(stream, before=body)
            await body.remove()
            body = stream
            chunk = self.text
        await body.append(chunk)

    async def finalize(self, text: str) -> None:
        """The answer is complete (or stopped): show `text` as one Markdown document, exactly as
        an answer loaded from the store is shown."""
        self.text = text
        self.thaw()
        body = self.body
        # Not awaited: the swap is queued at once, and whoever finishes the answer (store writes,
        # footer, sidebar) does not wait for the Markdown to be built.
        if isinstance(body, StreamingMarkdown) or not isinstance(body, Markdown):
            self.mount(Markdown(text, classes="msg-body"), before=body)
            body.remove()
        elif body.source != text:
            body.update(text)

    # -- a finished message is drawn from its painted rows (frozen.py) ----------------------------
    def on_mount(self) -> None:
        if self.role != "assistant":
            self.call_after_refresh(self._freeze)

    def on_markdown_table_of_contents_updated(self, event: Markdown.TableOfContentsUpdated) -> None:
        """The answer's Markdown is built: freeze the message after its first paint."""
        event.stop()
        self.call_after_refresh(self._freeze)

    def _freeze(self) -> None:
        # (called after a refresh: the box may be on its way out by then, its children removed
        # first, e.g. by a new conversation clearing the chat)
        bodies = self.query(".msg-body")
        if not self.is_mounted or not self.is_attached or not bodies or self.frozen is not None:
            return
        if self.role == "assistant" and (not self.text or not isinstance(bodies.first(), Markdown)):
            return  # streaming, or not answered yet
        if under_mouse(self):
            self.set_timer(1.0, self._freeze)  # the mouse is using it: try again later
        elif freeze_contents(self, on_thaw=lambda: self.call_after_refresh(self._freeze)) is None \
                and self.display and self._freeze_tries < 3:
            self._freeze_tries += 1  # not laid out yet
            self.call_after_refresh(self._freeze)

    @property
    def frozen(self) -> Optional[FrozenRows]:
        found = [w for w in self.children if isinstance(w, FrozenRows)]
        return found[0] if found else None

    def thaw(self) -> None:
        """Show the real widgets now (to change or measure them); whoever changes them freezes again."""
        frozen = self.frozen
        if frozen is not None:
            frozen.drop()

    def set_footer(self, markup: str) -> None:
        """Change the line under the message; a line that still fits is redrawn without a layout
        pass (the live stats change every tick, their height does not)."""
        if self.frozen is not None:
            self.thaw()
            self.call_after_refresh(self._freeze)
        footer = self.query_one(".msg-footer", Static)
        same_height = bool(self._footer_text) and _fits_one_line(markup, footer.content_size.width) \
            and _fits_one_line(self._footer_text, footer.content_size.width)
        self._footer_text = markup
        footer.update(markup, layout=not same_height)


def _fits_one_line(markup: str, width: int) -> bool:
    if width <= 0 or "\n" in markup:
        return False
    from rich.text import Text

    return Text.from_markup(markup).cell_len <= width


class ChatView(GrowingScroll, VerticalScroll):
    """The transcript.  Sticks to the bottom while an answer streams unless the user scrolls up."""

    can_focus = True

    def on_mount(self) -> None:
        if hasattr(self, "anchor"):
            self.anchor()

    def follow(self) -> None:
        if not hasattr(self, "anchor"):  # pragma: no cover - older textual
            self.scroll_end(animate=False)


class PromptInput(TextArea):
    """Multi-line input: Enter sends, Ctrl+J (or the configured key, or Shift+Enter) inserts a
    newline, Up on the first line recalls earlier prompts, Down on the last line goes forward."""

    class Submitted(TMessage):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, history: Optional[List[str]] = None, newline_key: str = "ctrl+j", **kw):
        super().__init__(**kw)
        self.prompts: List[str] = list(history or [])
        self._hist_pos: Optional[int] = None  # index into history while browsing
        self._draft = ""
        self.newline_keys = {"ctrl+j", "shift+enter", "alt+enter", newline_key}
        self.show_line_numbers = False

    def remember(self, text: str) -> None:
        if text.strip() and (not self.prompts or self.prompts[-1] != text):
            self.prompts.append(text)
        self._hist_pos = None

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        if event.key in self.newline_keys:
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self._replace_via_keyboard("\n", start, end)
            return
        await super()._on_key(event)

    def _set(self, text: str) -> None:
        self.load_text(text)
        lines = text.split("\n")
        self.move_cursor((len(lines) - 1, len(lines[-1])))

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0 and self.prompts:
            if self._hist_pos is None:
                self._draft = self.text
                self._hist_pos = len(self.prompts)
            if self._hist_pos > 0:
                self._hist_pos -= 1
                self._set(self.prompts[self._hist_pos])
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        last_row = self.document.line_count - 1
        if not select and self._hist_pos is not None and self.cursor_location[0] >= last_row:
            self._hist_pos += 1
            if self._hist_pos >= len(self.prompts):
                self._hist_pos = None
                self._set(self._draft)
            else:
                self._set(self.prompts[self._hist_pos])
            return
        super().action_cursor_down(select)


class StatusBar(Static):
    """model · devices · state · FTL / tok/s · context · memory (redrawn on a timer, not per token)."""

    def show(self, markup: str) -> None:
        if markup != getattr(self, "_last", None):
            self._last = markup
            self.update(markup, layout=False)  # one line, always: no layout pass needed


class ConversationItem(ListItem):
    def __init__(self, conv_id: int, title: str, when: float):
        self.conv_id, self.shown = conv_id, self._labels(title, when)
        super().__init__(Label(self.shown[0], classes="conv-title"), Label(self.shown[1], classes="conv-when"))

    @staticmethod
    def _labels(title: str, when: float) -> tuple:
        return escape(title or "(untitled)"), time.strftime("%m-%d %H:%M", time.localtime(when))

    def show(self, conv_id: int, title: str, when: float) -> None:
        """Show another conversation in this row (labels changed in place: no remount)."""
        labels = self._labels(title, when)
        if labels != self.shown:
            for label, text in zip(self.query(Label), labels):
                label.update(text)
        self.conv_id, self.shown = conv_id, labels


class ConvListView(ListView):
    BINDINGS = [
        ("n", "app.new_conversation", "New"),
        ("r", "app.rename_conversation", "Rename"),
        ("d", "app.delete_conversation", "Delete"),
        ("delete", "app.delete_conversation", "Delete"),
    ]


class ConversationList(Vertical):
    """Sidebar: search box and the saved conversations, newest first.
    Enter opens; n new; r rename; Delete/d delete."""

    class Selected(TMessage):
        def __init__(self, conv_id: int) -> None:
            super().__init__()
            self.conv_id = conv_id

    def compose(self) -> ComposeResult:
        yield Label("Conversations", id="sidebar-title")
        yield Input(placeholder="search…", id="conv-search")
        yield ConvListView(id="conv-list")

    def fill(self, convs, current: Optional[int]) -> None:
        """Show `convs`, `current` highlighted.  Rows are relabelled in place when their number
        is unchanged (a send moves its conversation to the top: no widget is mounted again)."""
        lv = self.query_one(ListView)
        items = [w for w in lv.children if isinstance(w, ConversationItem)]
        if len(items) == len(convs) and len(items) == len(lv.children):
            for item, c in zip(items, convs):
                item.show(c.id, c.title, c.updated)
        else:
            lv.clear()
            for c in convs:
                lv.append(ConversationItem(c.id, c.title, c.updated))
        index = None
        for i, c in enumerate(convs):
            if c.id == current:
                index = i
        if index is None and convs:
            index = 0
        if index is not None:
            # after the new items are mounted, or the index is dropped
            lv.call_after_refresh(setattr, lv, "index", index)

    @property
    def highlighted_id(self) -> Optional[int]:
        if not self.display:
            return None  # hidden: it may be out of date (App.refresh_sidebar), and no one sees it
        item = self.query_one(ListView).highlighted_child
        return item.conv_id if isinstance(item, ConversationItem) else None

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Selected(event.item.conv_id))


class ImageView:
    """What the UI shows of an image: a one-line chip and, when the file can be
    read, a small half-block preview (a rich renderable)."""

    PREVIEW_W, PREVIEW_H = 24, 6

    def __init__(self, name: str, facts: str = "", preview=None, problem: Optional[str] = None):
        self.name = name
        self.preview = preview
        self.problem = problem
        chip = f"▣ {escape(name)}"
        if facts:
            chip += f" [dim]· {escape(facts)}[/dim]"
        if problem:
            chip += f" [b red]· {escape(problem)}[/]"
        self.chip = chip

    @classmethod
    def of_loaded(cls, img, with_preview: bool = True) -> "ImageView":
        from ..vision.image import human_bytes

        preview = None
        if with_preview and img.image is not None:
            from ..vision.preview import HalfBlockPreview

            preview = HalfBlockPreview(img.image, cls.PREVIEW_W, cls.PREVIEW_H)
        return cls(img.name, f"{img.width}×{img.height} {img.format} {human_bytes(img.size_bytes)}", preview)

    @classmethod
    def of_attachment(cls, att, with_preview: bool = True) -> "ImageView":
        """From a message's attachment; reads the file again if needed (a gone or
        changed file is said on the chip, never an error)."""
        from ..chat.session import reload_attachment
        from ..errors import TpuchatError

        try:
            img = reload_attachment(att)
        except TpuchatError as e:
            problem = "file gone" if att.path and not _exists(att.path) else str(e)
            return cls(att.name or "image", att.path or "", None, problem)
        return cls.of_loaded(img, with_preview)


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


class AttachmentChip(Static):
    """The image waiting to go with the next message (hidden when there is none)."""

    def show_image(self, view: Optional[ImageView]) -> None:
        self.display = view is not None
        if view is not None:
            self.update(view.chip + "  [dim]attached to your next message · /image off removes it[/dim]")
