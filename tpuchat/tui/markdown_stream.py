"""A streamed answer on screen: finished Markdown blocks become static widgets that are laid out
once, only the growing tail is parsed and redrawn.

Textual lays out the whole screen whenever a widget changes size, and every Markdown block is a
widget (a list item is three), so a long answer streamed into one Markdown widget costs more with
every line.  Here each finished block is rendered once into one plain widget whose height is
cached, and the tail (the block still being written) is the only thing that changes.  When the
answer ends, MessageBox replaces all of it with one Markdown widget of the whole text, so a
finished answer looks exactly like one loaded from the store.
"""

from __future__ import annotations

from typing import List, Optional

from rich.segment import Segment
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

_FENCES = ("```", "~~~")


def finished_prefix(text: str) -> int:
    """Length of the part of `text` made of finished Markdown blocks (0 if none).

    A block is finished when a blank line outside a code fence is followed by a line that starts
    a new block at the left margin (an indented line could still continue a list item or be
    indented code).  The boundary is the start of that line, so the prefix keeps its blank line.
    """
    fence: Optional[str] = None
    cut = 0
    pos = 0
    blank_before = False
    for line in text.splitlines(keepends=True):
        complete = line.endswith("\n")
        stripped = line.strip()
        if fence is None and blank_before and pos > 0 and line[:1] not in (" ", "\t", "\n", "\r"):
            cut = pos
        opener = stripped[:3]
        if complete and opener in _FENCES and len(line) - len(line.lstrip(" ")) < 4:
            if fence is None:
                fence = opener
            elif stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
        blank_before = complete and not stripped
        pos += len(line)
    return cut


class StreamingMarkdown(Vertical):
    """Markdown that only grows: frozen blocks above, a live tail below."""

    DEFAULT_CSS = """
    StreamingMarkdown { height: auto; }
    /* a blank line after each group of blocks, as Textual's Markdown puts after a block */
    StreamingMarkdown > .md-frozen, StreamingMarkdown > .md-tail { height: auto; margin: 0 0 1 0; }
    """

    # Finished blocks are gathered into widgets of up to this many characters: few widgets to lay
    # out, and little to re-render when a block joins one.
    GROUP_CHARS = 2000

    def __init__(self, text: str = "", **kw):
        super().__init__(**kw)
        self.text = ""
        self._frozen = 0  # characters of self.text in frozen widgets
        self._initial = text

    def compose(self) -> ComposeResult:
        yield _Block("", "md-tail")

    async def on_mount(self) -> None:
        if self._initial:
            await self.append(self._initial)

    @property
    def tail_widget(self) -> "_Block":
        return self.query_one(".md-tail", _Block)

    async def append(self, chunk: str) -> None:
        if not chunk:
            return
        self.text += chunk
        tail = self.text[self._frozen:]
        cut = finished_prefix(tail)
        if cut:
            done, tail = tail[:cut], tail[cut:]
            self._frozen += cut
            frozen = self.query(".md-frozen")
            last = frozen.last() if frozen else None
            if isinstance(last, _Block) and len(last.source) + len(done) <= self.GROUP_CHARS:
                last.set_source(last.source + done)  # re-rendered once per finished block
            else:
                await self.mount(_Block(done, "md-frozen"), before=self.tail_widget)
        self.tail_widget.set_source(tail)


class _Block(Widget):
    """Markdown source rendered once per width into cached lines (Textual's line API): its
    height and its lines come from the same render, and scrolling re-renders nothing."""

    DEFAULT_CSS = "_Block { height: auto; }"

    def __init__(self, source: str, classes: str):
        super().__init__(classes=classes)
        self.source = source
        self._key: Optional[tuple] = None
        self._strips: List[Strip] = []

    def set_source(self, source: str) -> None:
        if source == self.source:
            return
        self.source = source
        height = len(self._strips)
        self._key = None
        width = self.content_size.width
        if width > 0:
            # Rendered now at the current width; a tail that gained no line needs no layout pass.
            self.refresh(layout=len(self._lines(width)) != height)
        else:
            self.refresh(layout=True)

    def _lines(self, width: int) -> List[Strip]:
        style = self.visual_style.rich_style
        key = (width, style)
        if self._key != key:
            self._key = key
            self._strips = []
            if width > 0 and self.source.strip():
                from rich.markdown import Markdown as RichMarkdown
                from rich.styled import Styled

                console = self.app.console
                options = self.app.console_options.update(highlight=False).update_width(width)
                segments = console.render(Styled(RichMarkdown(self.source.strip("\n")), style), options)
                self._strips = [Strip(line) for line in
                                Segment.split_and_crop_lines(segments, width, include_new_lines=False, pad=False)]
        return self._strips

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render_line(self, y: int) -> Strip:
        strips = self._lines(self.content_size.width)
        return strips[y] if 0 <= y < len(strips) else Strip.blank(self.content_size.width)

