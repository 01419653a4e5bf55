"""Finished messages drawn from their painted rows instead of being laid out on every frame.

Textual lays out every widget of the screen whenever anything changes size, and a finished answer
is a Markdown widget of dozens of block widgets: with each finished answer above it, every tick of
a streamed answer costs more.  Once a finished message's body has been laid out and painted, its
rows are captured (rendered exactly as the screen shows them) into one FrozenRows widget that takes
its place; the real widget stays mounted, hidden, out of every layout pass.

The real widget comes back (and is captured again after its next paint) when the rows could be out
of date or something needs it: another width (terminal resized, sidebar toggled), another theme,
or the mouse over it (links, scrolling a wide code block, selecting text).
"""

from __future__ import annotations

from typing import Callable, List, Optional

from textual import events
from textual.strip import Strip
from textual.widget import Widget


def capture_rows(widget: Widget) -> Optional[List[Strip]]:
    """The rows `widget` paints at its current size, or None if it has not been laid out."""
    try:
        from textual._compositor import Compositor
    except ImportError:  # pragma: no cover - another Textual layout
        return None
    size = widget.size
    if not widget.is_mounted or not widget.display or size.width <= 0 or size.height <= 0:
        return None
    compositor = Compositor()
    compositor.reflow(widget, size)
    return compositor.render_strips(size)


def _theme(app) -> object:
    return getattr(app, "theme", None), getattr(app, "dark", None)


class FrozenRows(Widget):
    """The painted rows of a hidden widget (`source`), shown in its place."""

    DEFAULT_CSS = "FrozenRows { height: auto; }"

    def __init__(self, source: Widget, rows: List[Strip], on_thaw: Optional[Callable[[], None]] = None):
        super().__init__()
        self.source = source
        self._on_thaw = on_thaw
        self._rows = rows
        self.captured_width = source.size.width
        self._theme = _theme(source.app)
        self._thawing = False
        self.styles.margin = source.styles.margin

    def get_content_height(self, container, viewport, width: int) -> int:
        if width != self.captured_width:
            self.thaw()
        return len(self._rows)

    def render_line(self, y: int) -> Strip:
        if _theme(self.app) != self._theme:
            self.thaw()
        return self._rows[y] if 0 <= y < len(self._rows) else Strip.blank(self.size.width)

    def on_enter(self, event: events.Enter) -> None:
        self.thaw()  # the real widget handles the mouse: links, wide code blocks, selection

    def thaw(self) -> None:
        """Show the real widget again (once); its owner freezes it after its next paint."""
        if self._thawing:
            return
        self._thawing = True
        self.call_later(self._swap_back)

    def drop(self) -> None:
        """Show the real widget again now, and nothing else (its owner is about to change it)."""
        self._on_thaw = None
        self._swap_back()

    def _swap_back(self) -> None:
        if self.source.is_mounted:
            self.source.display = True
        self.remove()
        if self._on_thaw is not None:
            self._on_thaw()


def under_mouse(widget: Widget) -> bool:
    over = getattr(widget.app, "mouse_over", None)
    return over is not None and (over is widget or widget in over.ancestors)


def freeze(widget: Widget, on_thaw: Optional[Callable[[], None]] = None) -> Optional[FrozenRows]:
    """Put the painted rows of `widget` in its place (None if it cannot be captured now).
    `on_thaw` is called when the real widget is shown again."""
    rows = capture_rows(widget)
    if rows is None or widget.parent is None:
        return None
    frozen = FrozenRows(widget, rows, on_thaw)
    widget.parent.mount(frozen, before=widget)
    widget.display = False
    return frozen
