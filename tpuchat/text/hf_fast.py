"""Hugging Face `tokenizer.json` tokenizers through the `tokenizers` library alone.

Importing transformers costs seconds (and tens of MB) before the chat UI can take a keystroke;
`tokenizers` loads in milliseconds. For the tokenizer classes whose pipeline transformers takes
unchanged from tokenizer.json, this gives the same ids, text and prompts as transformers (checked
against it in tests/unit/text); any other class is left to HFTokenizer (hf.py), which uses
transformers itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import TokenizerError
from .base import Message, Tokenizer
from .templates import ALPACA_TEMPLATE, CHATML_TEMPLATE, read_chat_template, read_json, render_template

# Classes that transformers builds straight from tokenizer.json, adding nothing for encode/decode
# without special tokens. Others (Llama's SentencePiece legacy mode, ...) may rewrite the pipeline.
PLAIN_CLASSES = {
    None,
    "PreTrainedTokenizerFast",
    "TokenizersBackend",
    "Qwen2Tokenizer",
    "Qwen2TokenizerFast",
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
}

# The special-token attributes transformers passes to every chat template (special_tokens_map).
SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _content(value: Any) -> Optional[str]:
    """A token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def can_load(directory: Union[str, Path]) -> bool:
    """Whether FastHFTokenizer gives transformers' results for this dir."""
    d = Path(directory)
    if not (d / "tokenizer.json").is_file():
        return False
    config = read_json(d / "tokenizer_config.json")
    if config.get("tokenizer_class") not in PLAIN_CLASSES:
        return False
    # transformers rebuilds the pre-tokenizer when told to add a prefix space
    return not config.get("add_prefix_space")


class FastHFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, path: Union[str, Path]):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from tokenizers import Tokenizer as RawTokenizer

        path = Path(path)
        try:
            self.raw = RawTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # the Rust side raises a bare Exception for any bad file
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError("cannot load the tokenizer in {} (tokenizer.json: {})".format(path, first_line))
        config = read_json(path / "tokenizer_config.json")
        extra = read_json(path / "special_tokens_map.json")  # fills what tokenizer_config leaves out
        self._named: Dict[str, str] = {}
        for attr in SPECIAL_ATTRS:
            value = _content(config.get(attr)) if attr in config else _content(extra.get(attr))
            if value is not None:
                self._named[attr] = value
        additional = config.get("additional_special_tokens", extra.get("additional_special_tokens")) or []
        self._additional = [t for t in (_content(a) for a in additional) if t is not None]
        template = read_chat_template(path)
        if template is None:
            # As HFTokenizer: ChatML for vocabularies that have its tokens, else WizardCoder's Alpaca.
            template = CHATML_TEMPLATE if self.raw.token_to_id("<|im_start|>") is not None else ALPACA_TEMPLATE
        super().__init__(path, template)
        self._special = None  # type: Optional[Dict[str, int]]

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        return list(self.raw.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # No clean_up_tokenization_spaces, as in HFTokenizer.decode.
        return self.raw.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.raw.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> Dict[str, int]:
        if self._special is None:
            special = {}  # type: Dict[str, int]
            for token_id, added in self.raw.get_added_tokens_decoder().items():
                if added.special:
                    special[added.content] = int(token_id)
            for token in list(self._named.values()) + self._additional:
                token_id = self.raw.token_to_id(token)
                if token_id is not None:
                    special[token] = token_id
            self._special = special
        return dict(self._special)

    @property
    def special_tokens_map(self) -> Dict[str, Any]:
        """What transformers (5.x) hands a chat template as variables besides the messages: the
        named special tokens (4.x also passed additional_special_tokens; no known template reads it)."""
        return dict(self._named)

    @property
    def bos_token(self) -> Optional[str]:
        return self._named.get("bos_token")

    @property
    def eos_token(self) -> Optional[str]:
        return self._named.get("eos_token")

    def token_to_id(self, token: str) -> Optional[int]:
        return self.raw.token_to_id(token)

    def _render(self, messages: List[Message], add_generation_prompt: bool, **template_kwargs: Any) -> str:
        # transformers drops keys whose value is None before rendering (templates test for presence)
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return render_template(self.chat_template, messages, add_generation_prompt, self.special_tokens_map,
                               **template_kwargs)

