"""Reading an image file (or bytes) and checking it before anything uses it.

Limits: at most MAX_IMAGE_BYTES on disk and MAX_IMAGE_PIXELS decoded (a 20 MB
PNG can decode to gigabytes; boards have little RAM).  The pixel count is read
from the header before any pixel is decoded, and Pillow's own decompression
bomb guard is turned into an error, not a warning.  Every failure is one
ImageError line naming the file.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ImageError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # 40 MP: a 7300x5500 photo; Mllama resizes to a few 560 px tiles anyway
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


@dataclass
class LoadedImage:
    """A checked, fully decoded image and where it came from."""

    name: str  # file name, or what the caller called it ("image 1")
    path: Optional[str]  # absolute path when read from a file
    digest: str  # sha256 of the bytes: the image's identity
    size_bytes: int
    width: int
    height: int
    format: str  # PNG, JPEG, ...
    image: Any = field(repr=False, default=None)  # PIL.Image.Image, RGB or as decoded

    def describe(self) -> str:
        """'cat.png 640×480 PNG 12 KB'"""
        return f"{self.name} {self.width}×{self.height} {self.format} {human_bytes(self.size_bytes)}"


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImageError("images need Pillow: pip install 'tpuchat[vision]' (or pip install Pillow)") from None
    return Image


def load_image(path: Union[str, Path]) -> LoadedImage:
    """Read and check an image file; raises ImageError with one line."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise ImageError(f"image not found: {p}")
    if p.is_dir():
        raise ImageError(f"{p} is a directory, not an image")
    try:
        size = p.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageError(f"{p} is {human_bytes(size)}; images up to {human_bytes(MAX_IMAGE_BYTES)} are accepted")
        with p.open("rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ImageError(f"cannot read image {p}: {e.strerror or e}") from None
    return load_image_bytes(data, name=p.name, path=str(p.resolve()), label=str(p))


def load_image_bytes(data: bytes, name: str = "image", path: Optional[str] = None,
                     label: Optional[str] = None) -> LoadedImage:
    """Check and decode image bytes (from a file, or a data: URL)."""
    label = label or name
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{label} is {human_bytes(len(data))}; images up to {human_bytes(MAX_IMAGE_BYTES)} "
                         "are accepted")
    if not data:
        raise ImageError(f"{label} is empty (0 bytes)")
    Image = _pil()
    import io

    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises at twice that: make both errors.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            fmt = img.format or "image"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{label} has too many pixels; images up to {MAX_IMAGE_PIXELS // 1_000_000} MP "
                             "are accepted") from None
        except Exception:  # UnidentifiedImageError, SyntaxError from broken headers, ...
            raise ImageError(f"{label} is not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF)") from None
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageError(f"{label} is {width}×{height} pixels ({width * height / 1e6:.0f} MP); images up to "
                             f"{MAX_IMAGE_PIXELS // 1_000_000} MP are accepted")
        if width < 1 or height < 1:
            raise ImageError(f"{label} has no pixels ({width}×{height})")
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{label} has too many pixels") from None
        except Exception as e:  # truncated file, bad compressed data
            raise ImageError(f"{label} is damaged or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return LoadedImage(name=name, path=path, digest=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                       width=width, height=height, format=fmt, image=img)
