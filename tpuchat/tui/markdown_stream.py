"""A streamed answer on screen: finished Markdown blocks become static widgets that are laid out
once, only the growing tail is parsed and redrawn.

Textual lays out the whole screen whenever a widget changes size, and every Markdown block is a
widget (a list item is three), so a long answer streamed into one Markdown widget costs more with
every line.  Here the answer is one widget: each finished group of blocks is rendered once into
cached lines, and the tail (the block still being written) is the only thing rendered again.  When the
answer ends, MessageBox replaces all of it with one Markdown widget of the whole text, so a
finished answer looks exactly like one loaded from the store.
"""

from __future__ import annotations

import copy
from typing import List, Optional

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

from .growing import GrowingWidget

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


class StreamingMarkdown(GrowingWidget, Widget):
    """Markdown that only grows, drawn as one widget from cached lines: finished groups of blocks
    above (rendered once per width), the live tail below (rendered again when it changes).

    One widget instead of a container of blocks: the compositor paints one layer, and a tick
    that adds no line repaints only the tail's rows without a layout pass."""

    DEFAULT_CSS = "StreamingMarkdown { height: auto; }"

    # Finished blocks are gathered into groups of up to this many characters: each group is one
    # Markdown document (blocks inside it keep Markdown's own spacing), and little is rendered
    # again when a block joins one.
    GROUP_CHARS = 2000

    def __init__(self, text: str = "", **kw):
        super().__init__(**kw)
        self.text = ""
        self._frozen = 0  # characters of self.text in frozen groups
        self._groups: List[_Rendered] = []
        self._tail = _Rendered("")
        self._frozen_lines: Optional[List[Strip]] = None  # the groups' lines, each group + a blank line
        self._frozen_key: Optional[tuple] = None
        self._width = 0  # the width of the last layout (0 before the first)
        if text:
            self._add(text)

    async def append(self, chunk: str) -> None:
        if not chunk:
            return
        width = self._width
        height = self._height(width) if width else 0
        first_changed = self._add(chunk)
        if not width:
            self.refresh(layout=True)
            return
        new_height = self._height(width)
        # Only the rows from the first changed line down are painted again (GrowingWidget keeps
        # the others when the height changes); a layout pass only when the height changed.
        rows = max(height, new_height) - first_changed
        self.refresh(Region(0, first_changed, width, rows), layout=new_height != height)

    def _add(self, chunk: str) -> int:
        """Take `chunk` in; returns the first row that may have changed (at the last width)."""
        self.text += chunk
        tail = self.text[self._frozen:]
        cut = finished_prefix(tail)
        first = len(self._frozen_lines) if self._frozen_lines is not None and self._width else 0
        if cut:
            done, tail = tail[:cut], tail[cut:]
            self._frozen += cut
            last = self._groups[-1] if self._groups else None
            if last is not None and len(last.source) + len(done) <= self.GROUP_CHARS:
                if first:
                    first -= len(last.lines(self, self._width)) + 1
                last.set_source(last.source + done)  # rendered again once per finished block
            else:
                self._groups.append(_Rendered(done))
            self._frozen_lines = None
        self._tail.set_source(tail)
        return max(0, first)

    def _frozen_part(self, width: int) -> List[Strip]:
        key = (width, self.visual_style.rich_style)
        if self._frozen_lines is None or key != self._frozen_key:
            self._frozen_key = key
            lines: List[Strip] = []
            for g in self._groups:
                lines += g.lines(self, width)
                lines.append(self._blank(width))  # the blank line Markdown puts after a block
            self._frozen_lines = lines
        return self._frozen_lines

    def _height(self, width: int) -> int:
        return len(self._frozen_part(width)) + len(self._tail.lines(self, width)) + 1

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        height = self._height(width)
        self._width = width
        return height

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        frozen = self._frozen_part(width)
        if y < len(frozen):
            return frozen[y]
        tail = self._tail.lines(self, width)
        y -= len(frozen)
        return tail[y] if 0 <= y < len(tail) else self._blank(width)

    def _blank(self, width: int) -> Strip:
        # the background alone, as the padding beside it: the row is painted as one run
        return Strip.blank(width, Style(bgcolor=self.visual_style.rich_style.bgcolor))


class _Rendered:
    """Markdown source and its lines, rendered once per (width, style)."""

    __slots__ = ("source", "_key", "_strips")

    def __init__(self, source: str):
        self.source = source
        self._key: Optional[tuple] = None
        self._strips: List[Strip] = []

    def set_source(self, source: str) -> None:
        if source != self.source:
            self.source = source
            self._key = None

    def lines(self, widget: Widget, width: int) -> List[Strip]:
        style = widget.visual_style.rich_style
        key = (width, style)
        if self._key != key:
            self._key = key
            self._strips = []
            if width > 0 and self.source.strip():
                from rich.styled import Styled

                app = widget.app
                options = app.console_options.update(highlight=False).update_width(width)
                segments = app.console.render(Styled(rich_markdown(self.source.strip("\n")), style), options)
                self._strips = [Strip(line) for line in
                                Segment.split_and_crop_lines(segments, width, include_new_lines=False, pad=False)]
        return self._strips


_PARSER: Optional[object] = None  # markdown-it parser configured as rich's, or False: use rich's own
_TEMPLATE: Optional[object] = None


def rich_markdown(source: str):
    """rich's Markdown of `source`, parsed by one reused markdown-it parser: rich builds a new
    parser for every document, half the cost of rendering a short tail ten times a second."""
    from rich.markdown import Markdown

    global _PARSER, _TEMPLATE
    if _PARSER is None:
        _PARSER = False
        try:
            from markdown_it import MarkdownIt

            parser = MarkdownIt().enable("strikethrough").enable("table")
            probe = "# h\n\n~~s~~ *e* `c`\n\n| a |\n|---|\n| b |\n\n- i\n\n```py\nx\n```\n"
            template = Markdown(probe)
            if [t.type for t in template.parsed] == [t.type for t in parser.parse(probe)]:
                _PARSER, _TEMPLATE = parser, template
        except Exception:  # noqa: BLE001 - another rich: its own parser it is
            pass
    if not _PARSER:
        return Markdown(source)
    md = copy.copy(_TEMPLATE)
    md.markup = source
    md.parsed = _PARSER.parse(source)
    return md
