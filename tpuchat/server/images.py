"""Where the server takes images from (OpenAI `image_url` parts), and the allow-list.

- `data:` URLs (base64): always; the request body limit bounds them.
- A local path or a `file://` URL: only when the server was started with
  `--image-dir DIR`, and only for files inside DIR after symlinks are resolved
  (a relative path is taken relative to DIR).  Anything else is a 400.
- http(s) URLs: refused; the server never fetches from the network (boards
  often have none, and fetching URLs named by clients is a way into the
  board's network).
"""

import base64
import binascii
import os
from typing import Optional
from urllib.parse import unquote, urlparse

from ..errors import ImageError
from . import protocol as P


def check_image_dir(path: Optional[str]) -> Optional[str]:
    """The allow-list dir as an absolute real path (TpuchatError if it is not a dir)."""
    if path is None:
        return None
    from ..errors import TpuchatError

    real = os.path.realpath(os.path.expanduser(path))
    if not os.path.isdir(real):
        raise TpuchatError(f"--image-dir {path} is not a directory")
    return real


def _refuse(message: str, param: str, code: str = "invalid_image_url") -> P.ApiError:
    return P.bad(message, param, code)


def load_image_url(url: str, image_dir: Optional[str], param: str):
    """The LoadedImage an image_url names; ApiError 400 with one clear line otherwise."""
    from ..vision import load_image, load_image_bytes

    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    try:
        if scheme == "data":
            head, sep, payload = url.partition(",")
            if not sep or not head.lower().endswith(";base64"):
                raise _refuse("image data: URLs must be base64 (data:image/png;base64,...)", param)
            try:
                data = base64.b64decode(payload.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise _refuse("the image data: URL is not valid base64", param) from None
            return load_image_bytes(data, name="image", label="the image in the data: URL")
        if scheme in ("http", "https", "ftp"):
            raise _refuse(f"{scheme} image URLs are not fetched (this server makes no network requests): send the "
                          "image inline as a data: URL (base64)", param, "image_url_unsupported")
        if scheme == "file":
            u = urlparse(url)
            if u.netloc not in ("", "localhost"):
                raise _refuse(f"file URLs on other hosts are not supported: {url}", param)
            path = unquote(u.path)
        elif scheme and len(scheme) > 1:  # a scheme we do not know (not a Windows drive letter)
            raise _refuse(f"unsupported image URL scheme {scheme!r}: use a data: URL", param, "image_url_unsupported")
        else:
            path = url
        if image_dir is None:
            raise _refuse("local image paths are refused: start the server with --image-dir DIR to allow files "
                          "under DIR, or send the image as a data: URL", param, "image_path_not_allowed")
        full = os.path.realpath(os.path.join(image_dir, os.path.expanduser(path)))
        if os.path.commonpath([full, image_dir]) != image_dir:
            raise _refuse(f"{path} is outside the server's image dir ({image_dir})", param, "image_path_not_allowed")
        return load_image(full)
    except ImageError as e:
        raise P.bad(str(e), param, "invalid_image") from None
