"""Qwen-7B v1's tokenizer: `qwen.tiktoken` (base64 token, rank per line) through tiktoken.

Mirrors Qwen's own tokenization_qwen.py, which we must not run (remote code): same split
pattern, same special tokens after the 151,643 merge ranks, NFC normalisation before encoding,
special-token text in the input is parsed as the special token, errors="replace" on decode.
Qwen v1 ships no Jinja template: its chat format is ChatML built in code, reproduced by
CHATML_TEMPLATE with the default system prompt "You are a helpful assistant.".
"""

import base64
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import TokenizerError
from .base import Message, Tokenizer
from .templates import CHATML_TEMPLATE, read_chat_template, render_template

VOCAB_FILE = "qwen.tiktoken"

# Qwen's split pattern (tokenization_qwen.py), verbatim.
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EXTRAS = tuple("<|extra_{}|>".format(i) for i in range(205))
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = {token: SPECIAL_START_ID + i for i, token in enumerate((ENDOFTEXT, IM_START, IM_END) + EXTRAS)}


def load_ranks(path: Union[str, Path]) -> Dict[bytes, int]:
    ranks = {}  # type: Dict[bytes, int]
    with open(path, "rb") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                ranks[base64.b64decode(parts[0])] = int(parts[1])
    return ranks


class QwenTiktokenTokenizer(Tokenizer):
    kind = "qwen-tiktoken"

    def __init__(self, path: Union[str, Path]):
        path = Path(path)
        try:
            import tiktoken

            ranks = load_ranks(path / VOCAB_FILE)
            self.enc = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS)
        except (OSError, ValueError) as e:
            raise TokenizerError("cannot read {}: {}".format(path / VOCAB_FILE, e)) from e
        if len(ranks) != SPECIAL_START_ID:
            # The special ids are fixed numbers; another vocabulary would shift them silently.
            raise TokenizerError(
                "{} has {} tokens, Qwen v1's has {}".format(path / VOCAB_FILE, len(ranks), SPECIAL_START_ID)
            )
        super().__init__(path, read_chat_template(path) or CHATML_TEMPLATE)

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        # Qwen v1 has no BOS, so add_special_tokens adds nothing.
        return self.enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        limit = SPECIAL_START_ID if skip_special_tokens else self.enc.n_vocab
        # Ids beyond the vocabulary (the embedding is padded to 151,936 rows) are dropped, as
        # tiktoken would raise on them.
        return self.enc.decode([i for i in ids if 0 <= i < limit], errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def special_tokens(self) -> Dict[str, int]:
        return dict(SPECIAL_TOKENS)

    @property
    def eos_token(self) -> Optional[str]:
        return ENDOFTEXT

    def token_to_id(self, token: str) -> Optional[int]:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS[token]
        try:
            return self.enc.encode_single_token(token.encode("utf-8"))
        except KeyError:
            return None

    def _render(self, messages: List[Message], add_generation_prompt: bool, **template_kwargs: Any) -> str:
        return render_template(
            self.chat_template,
            messages,
            add_generation_prompt,
            special_tokens={"eos_token": ENDOFTEXT},
            **template_kwargs,
        )
