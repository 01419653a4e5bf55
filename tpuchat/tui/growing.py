"""Widgets that grow while an answer streams, without the costs Textual adds to every growth.

A streamed answer grows the transcript, the message box around the answer and the answer itself
about ten times a second.  Textual pays for each growth twice over:

- When a layout pass changes a widget's size, the new virtual size goes through a reactive that
  asks for another layout pass, so every tick would lay out and paint the whole screen twice.  The
  first pass has already placed everything (anchored scrolling included), so these widgets store
  the size without asking again, the way Textual's own ScrollView does.
- A widget whose size changes is marked dirty as a whole, so every visible row of it is rendered
  again although only the rows at the bottom are new.  When only the height changes and the
  widget's rows do not depend on its height (no top or bottom border or padding), the rows already
  rendered are kept; new rows are rendered when first shown, and a widget whose content changes
  marks the changed rows itself (StreamingMarkdown does).
"""

from __future__ import annotations

import inspect

from textual.widget import Widget

# _size_updated is private to Textual: on a version whose signature differs from the one this was
# written against (it takes `layout`), keep Textual's own behaviour.
_HAS_LAYOUT_FLAG = "layout" in inspect.signature(Widget._size_updated).parameters


def _rows_independent_of_height(widget: Widget) -> bool:
    styles = widget.styles
    return (not styles.border_top[0] or styles.border_top[0] == "none") and \
        (not styles.border_bottom[0] or styles.border_bottom[0] == "none") and \
        styles.padding.top == 0 and styles.padding.bottom == 0


class GrowingWidget:
    """Mixin (before the Textual base class) for widgets that grow in height while streaming."""

    if _HAS_LAYOUT_FLAG:
        def _size_updated(self, size, virtual_size, container_size, layout: bool = True) -> bool:
            old = self._size
            if size.width == old.width and size.height != old.height and old.height > 0 \
                    and _rows_independent_of_height(self):
                # Widget._size_updated marks the whole widget dirty when the size differs from the
                # stored one: store it first, and let it update the rest (virtual size, scrollbars).
                self._size = size
                super()._size_updated(size, virtual_size, container_size, layout=False)
                return True  # the size did change: a Resize event is due
            return super()._size_updated(size, virtual_size, container_size, layout=False)


class GrowingScroll(GrowingWidget):
    """GrowingWidget for a scrolling container (the transcript): its scrollbar, which changes with
    every growth, is painted in the frame of the layout pass that changed it.  Textual would paint
    it in a frame of its own right after (one more frame per tick, and more bytes to the terminal)."""

    if _HAS_LAYOUT_FLAG:
        def _size_updated(self, size, virtual_size, container_size, layout: bool = True) -> bool:
            changed = super()._size_updated(size, virtual_size, container_size, layout)
            if changed and self.show_vertical_scrollbar:
                compositor = getattr(self.screen, "_compositor", None)
                if compositor is not None and hasattr(compositor, "update_widgets"):
                    # hands the scrollbar's fresh repaint request to the frame being built
                    compositor.update_widgets({self.vertical_scrollbar})
            return changed
