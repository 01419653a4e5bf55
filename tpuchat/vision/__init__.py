"""Images for vision bmodels (Llama-3.2-Vision): loading and checking a file,
preprocessing it with the model's own image processor, a half-block preview
for the terminal, and placing the image token in the prompt.

Nothing heavy is imported here: Pillow, numpy and transformers are imported
by the functions that need them, so text-only use never pays for them (and
Pillow is only needed with the `vision` extra).
"""

from .image import (  # noqa: F401
    IMAGE_SUFFIXES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    LoadedImage,
    is_image_name,
    load_image,
    load_image_bytes,
)
from .prompt import IMAGE_TOKEN, find_image_pos, image_token_id  # noqa: F401


def preprocess(*args, **kwargs):
    """See tpuchat.vision.processing.preprocess (imports numpy/transformers on first use)."""
    from .processing import preprocess as _preprocess

    return _preprocess(*args, **kwargs)


def load_processor(*args, **kwargs):
    """See tpuchat.vision.processing.load_processor."""
    from .processing import load_processor as _load

    return _load(*args, **kwargs)
