"""A small picture of an image drawn with text: each cell is an upper half
block (▀) whose foreground is one pixel and background the pixel below, so a
cell holds two pixel rows.  Plain characters and colours: works in any
terminal that shows colour, over SSH and in textual-serve (rich downgrades
truecolor to 256 colours where needed)."""

from __future__ import annotations

from typing import List, Tuple

RGB = Tuple[int, int, int]


class HalfBlockPreview:
    """A rich renderable of a PIL image, at most `max_width` cells wide and
    `max_height` cells high (aspect ratio kept; a cell is about twice as high
    as wide, which the two pixel rows per cell make square)."""

    def __init__(self, image, max_width: int = 24, max_height: int = 8):
        w, h = image.size
        scale = min(max_width / w, (2 * max_height) / h)
        cols = max(1, min(max_width, round(w * scale)))
        rows = max(2, min(2 * max_height, round(h * scale)))
        rows += rows % 2
        small = image.convert("RGB").resize((cols, rows))
        raw = small.tobytes()
        px = [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]
        self.width = cols
        self.height = rows // 2
        self.rows: List[List[Tuple[RGB, RGB]]] = [
            [(px[(2 * r) * cols + c], px[(2 * r + 1) * cols + c]) for c in range(cols)] for r in range(self.height)
        ]

    def __rich_console__(self, console, options):
        from rich.color import Color
        from rich.segment import Segment
        from rich.style import Style

        cache = {}
        for row in self.rows:
            for top, bottom in row[: options.max_width]:
                style = cache.get((top, bottom))
                if style is None:
                    style = cache[(top, bottom)] = Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))
                yield Segment("▀", style)
            yield Segment.line()

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(self.width, self.width)
