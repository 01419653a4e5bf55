"""Image -> ImageInputs with the model's own image processor (transformers'
Mllama image processor read from `preprocessor_config.json` in the model's
config dir): resize, pad, normalise, split into tiles, aspect-ratio id and
mask.  numpy only (the PIL backend), never torch: boards do not have it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import ImageError
from ..runtime.image_inputs import ImageInputs
from .image import LoadedImage

_cache: Dict[str, Any] = {}
_lock = threading.Lock()


def load_processor(config_dir: Union[str, Path]):
    """The image processor of the model whose config dir this is (cached per dir)."""
    d = Path(config_dir).expanduser()
    key = str(d.resolve())
    with _lock:
        if key in _cache:
            return _cache[key]
    if not (d / "preprocessor_config.json").is_file():
        raise ImageError(f"no preprocessor_config.json in {d}: the model's image processor settings are missing "
                         "(llm_convert writes them into config/ beside a vision bmodel)")
    from ..text.hf import import_transformers

    transformers = import_transformers()
    major = int(transformers.__version__.split(".")[0])
    # transformers 5 picks torchvision when it can; 4.x the "fast" torch processor with use_fast.
    kw = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(str(d), local_files_only=True,
                                                               trust_remote_code=False, **kw)
    except Exception as e:  # transformers raises many kinds here
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot load the image processor from {d}/preprocessor_config.json: {first}") from None
    with _lock:
        _cache[key] = proc
    return proc


def preprocess(img: LoadedImage, processor, tiles: Optional[int] = None) -> ImageInputs:
    """One image as the vit net takes it.  `tiles`: the model's tile count (the
    processor's max_image_tiles must match it)."""
    import numpy as np

    max_tiles = int(getattr(processor, "max_image_tiles", 0) or 0)
    if tiles is not None and max_tiles and max_tiles != tiles:
        raise ImageError(f"the image processor makes up to {max_tiles} tiles but the model takes {tiles}: "
                         "preprocessor_config.json does not belong to this bmodel")
    pil = img.image
    if pil is None:
        raise ImageError(f"{img.name} was not decoded")
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    try:
        out = processor(images=[[pil]], return_tensors="np")
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"the image processor failed on {img.name}: {first}") from None
    pv = np.asarray(out["pixel_values"], dtype=np.float32)  # [1, 1, T, 3, H, W]
    if pv.ndim != 6 or pv.shape[0] != 1 or pv.shape[1] != 1 or pv.shape[3] != 3 or pv.shape[4] != pv.shape[5]:
        raise ImageError(f"the image processor returned pixel values of shape {tuple(pv.shape)}; "
                         "expected [1, 1, tiles, 3, size, size] (a Mllama-style processor)")
    pv = pv[0, 0]
    mask = [int(x) for x in np.asarray(out["aspect_ratio_mask"]).reshape(-1)]
    ar_id = int(np.asarray(out["aspect_ratio_ids"]).reshape(-1)[0])
    n_tiles = pv.shape[0]
    if tiles is not None and n_tiles < tiles:  # pad to the model's tile count
        pv = np.concatenate([pv, np.zeros((tiles - n_tiles,) + pv.shape[1:], np.float32)])
        mask += [0] * (tiles - n_tiles)
    used = sum(mask)
    pv = np.array(pv, dtype=np.float32, order="C")
    pv[used:] = 0.0  # padding tiles are zero, whatever the processor put there
    return ImageInputs(
        pixel_values=pv.tobytes(),
        tiles=int(pv.shape[0]),
        size=int(pv.shape[-1]),
        aspect_ratio_id=ar_id,
        aspect_ratio_mask=tuple(mask),
        digest=img.digest,
    )
