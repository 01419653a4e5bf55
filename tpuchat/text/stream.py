"""Streaming detokenization: token ids in, only new complete text out.

Decoding one token at a time is wrong: a Chinese character or an emoji is often split over
several byte-level tokens (each alone decodes to U+FFFD), and SentencePiece decoders drop the
leading space of whatever is decoded first. So we decode a window of the turn's tokens, emit
what the window's text gained since last time, and hold back a trailing U+FFFD (an incomplete
UTF-8 sequence that the next token may finish).

To stay O(1) per token the window slides forward every `window` tokens, but only after checking
that the shorter window decodes to the same text (except its first token's, which may differ
for the reasons above). The concatenation of everything push() and flush() return equals
tokenizer.decode(all ids).
"""

from typing import Iterable, List

from .base import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True, window: int = 16):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.window = max(4, int(window))
        self.reset()

    def reset(self) -> None:
        """Start a new turn."""
        self._ids = []  # type: List[int]
        self._start = 0  # first id of the decode window
        self._emitted = 0  # characters of the window's text already returned
        self._next_slide = 2 * self.window

    @property
    def ids(self) -> List[int]:
        """Every id pushed this turn."""
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that became final (often "")."""
        self._ids.append(int(token_id))
        text = self._decode_window()
        end = len(text)
        while end > self._emitted and text[end - 1] == _REPLACEMENT:
            end -= 1
        out = text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        if len(self._ids) >= self._next_slide:
            self._slide(text)
        return out

    def extend(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """End of the turn: return whatever was held back (a genuinely broken UTF-8 tail
        then shows as U+FFFD, exactly as a full decode shows it)."""
        text = self._decode_window()
        out = text[self._emitted :]
        self._emitted = len(text)
        return out

    def _decode_window(self) -> str:
        return self.tokenizer.decode(self._ids[self._start :], skip_special_tokens=self.skip_special_tokens)

    def _slide(self, text: str) -> None:
        """Move the window start to `window` ids before the end if that changes nothing but
        the head of the text; otherwise keep the longer window and try again later."""
        self._next_slide = len(self._ids) + self.window
        start = len(self._ids) - self.window
        shorter = self.tokenizer.decode(self._ids[start:], skip_special_tokens=self.skip_special_tokens)
        pending = len(text) - self._emitted
        # The first id's text may lose a leading space (SentencePiece) or start with U+FFFD
        # (a character split at the window start); the rest must match exactly.
        core = shorter.lstrip(" " + _REPLACEMENT)
        if len(core) >= pending and text.endswith(core):
            self._start = start
            self._emitted = len(shorter) - pending
            self._next_slide = len(self._ids) + self.window
