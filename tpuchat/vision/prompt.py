"""The image token in a prompt: which id it is, and where the template put it.

The model's own chat template places the image token (a message's content is
then a list of parts, `{"type": "image"}` and `{"type": "text", ...}`); the
engine needs its index in the prompt ids (`image_pos`) to build the
cross-attention masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import ImageError

IMAGE_TOKEN = "<|image|>"  # Llama-3.2-Vision


def image_token_id(tok) -> Optional[int]:
    """The id of the image token: the tokenizer's `<|image|>`, else config.json's
    `image_token_index` in the tokenizer dir; None for a text-only vocabulary."""
    try:
        i = tok.token_to_id(IMAGE_TOKEN)
    except Exception:  # tokenizers without the lookup
        i = None
    if i is not None:
        return int(i)
    path = getattr(tok, "path", None)
    if path is not None:
        from ..text.templates import read_json

        cfg = read_json(Path(path) / "config.json")
        v = cfg.get("image_token_index", cfg.get("image_token_id"))
        if isinstance(v, int):
            return v
    return None


def find_image_pos(ids: Sequence[int], token_id: Optional[int]) -> int:
    """Index of the one image token in ids; ImageError when there is none or more than one."""
    if token_id is None:
        raise ImageError(f"this model's tokenizer has no image token ({IMAGE_TOKEN}): it cannot take images")
    positions = [i for i, t in enumerate(ids) if t == token_id]
    if not positions:
        raise ImageError("the chat template did not place the image token in the prompt (a template without "
                         "image support?)")
    if len(positions) > 1:
        raise ImageError(f"the prompt holds {len(positions)} image tokens but the model takes one image: "
                         f"remove {IMAGE_TOKEN} from the message text")
    return positions[0]
