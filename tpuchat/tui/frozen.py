"""Finished messages drawn from their painted rows instead of being laid out on every frame.

Textual lays out every widget of the screen whenever anything changes size, and a finished message
is a box of widgets (title, body, footer; an answer's body is a Markdown widget of dozens of
blocks): with each finished message above it, every tick of a streamed answer would cost more.
Once a finished message has been laid out and painted, the rows of its contents are captured
(rendered exactly as the screen shows them) into one FrozenRows widget that takes their place; the
real widgets stay mounted, hidden, out of every layout pass.

They come back (and are captured again after their next paint) when the rows could be out of date
or something needs them: another width (terminal resized, sidebar toggled), another theme, the
mouse over the message (links, scrolling a wide code block, selecting text), or the owner changing
them (MessageBox.thaw before it changes its footer or body).
"""

from __future__ import annotations

from typing import Callable, List, Optional

from textual import events
from textual.strip import Strip
from textual.widget import Widget


def capture_content_rows(container: Widget) -> Optional[List[Strip]]:
    """The rows `container` paints inside its border and padding, or None if not laid out."""
    try:
        from textual._compositor import Compositor
    except ImportError:  # pragma: no cover - another Textual layout
        return None
    outer, inner = container.outer_size, container.size  # with and without border and padding
    if not container.is_mounted or not container.display or inner.width <= 0 or inner.height <= 0:
        return None
    try:  # Textual's compositor is private: on a version where this fails, nothing is frozen
        compositor = Compositor()
        compositor.reflow(container, outer)
        rows = compositor.render_strips(outer)
    except Exception:  # noqa: BLE001
        return None
    gutter = container.styles.gutter
    rows = rows[gutter.top:gutter.top + inner.height]
    # (empty segments dropped and equal neighbours joined: fewer segments to paint, same cells)
    return [Strip([seg for seg in row.crop(gutter.left, gutter.left + inner.width) if seg.text]).simplify()
            for row in rows]


def _theme(app) -> object:
    return getattr(app, "theme", None), getattr(app, "dark", None)


def under_mouse(widget: Widget) -> bool:
    """Whether the mouse is over `widget` now. `App.mouse_over` alone is not enough: right after
    a thaw it still names the FrozenRows just removed (it is updated later, by an event), and the
    message would be frozen again under the mouse. So the widget at the mouse's cell is asked."""
    app = widget.app
    if getattr(app, "mouse_over", None) is None:
        return False  # the mouse is not over the app at all
    try:
        over, _ = widget.screen.get_widget_at(*app.mouse_position)
    except Exception:  # noqa: BLE001 - no widget there (NoWidget), or not on a screen any more
        return False
    return over is widget or widget in over.ancestors


class FrozenRows(Widget):
    """The painted rows of its container's hidden children, shown in their place."""

    DEFAULT_CSS = "FrozenRows { height: auto; }"

    def __init__(self, rows: List[Strip], width: int, hidden: List[Widget],
                 on_thaw: Optional[Callable[[], None]] = None):
        super().__init__()
        self._rows = rows
        self.captured_width = width
        self.hidden = hidden
        self._on_thaw = on_thaw
        self._theme: object = None
        self._thawing = False

    def on_mount(self) -> None:
        self._theme = _theme(self.app)

    def get_content_height(self, container, viewport, width: int) -> int:
        if width != self.captured_width:
            self.thaw()
        return len(self._rows)

    def render_line(self, y: int) -> Strip:
        if _theme(self.app) != self._theme:
            self.thaw()
        return self._rows[y] if 0 <= y < len(self._rows) else Strip.blank(self.size.width)

    def on_enter(self, event: events.Enter) -> None:
        self.thaw()  # the real widgets handle the mouse: links, wide code blocks, selection

    def thaw(self) -> None:
        """Show the real widgets again (soon, once); then `on_thaw` is called."""
        if not self._thawing:
            self._thawing = True
            self.call_later(self._swap_back, True)

    def drop(self) -> None:
        """Show the real widgets again now, without calling `on_thaw` (the owner changes them)."""
        self._thawing = True
        self._swap_back(False)

    def _swap_back(self, notify: bool) -> None:
        if self.is_attached:
            for widget in self.hidden:
                if widget.is_attached:
                    widget.display = True
            self.remove()
            if notify and self._on_thaw is not None:
                self._on_thaw()


def freeze_contents(container: Widget, on_thaw: Optional[Callable[[], None]] = None) -> Optional[FrozenRows]:
    """Put the painted rows of `container`'s children in their place (None if it cannot now)."""
    rows = capture_content_rows(container)
    if rows is None:
        return None
    hidden = [w for w in container.children if w.display]
    frozen = FrozenRows(rows, container.size.width, hidden, on_thaw)
    container.mount(frozen)
    for widget in hidden:
        widget.display = False
    return frozen
