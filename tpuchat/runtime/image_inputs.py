"""One preprocessed image for a vision bmodel (plain data, no device code).

Made by the front end's image preprocessing, consumed by the engine: the
engine runs the bmodel's `vit` net on it once and keeps the image K/V of the
cross-attention layers on the device while the same image (same digest)
stays in the conversation.
"""

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class ImageInputs:
    pixel_values: bytes  # float32, C order, shape [tiles, 3, size, size]; padding tiles zero
    tiles: int  # tiles in pixel_values (the model's maximum, padded)
    size: int  # tile edge in pixels
    aspect_ratio_id: int  # the image processor's aspect-ratio id (1-based; 0 = padding)
    aspect_ratio_mask: Tuple[int, ...]  # 1 per used tile, 0 per padding tile; len == tiles
    digest: str  # sha256 of the image bytes: same digest, same image K/V

    @property
    def used_tiles(self) -> int:
        return sum(self.aspect_ratio_mask)
