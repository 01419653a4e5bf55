"""Prompt-lookup decoding: guess the next tokens from the conversation itself.

When the last few tokens of the sequence also appear earlier in it (a quoted
document, code being edited, a template being filled), what followed them
there is a good guess for what follows now.  A chunk pass over
[current token + draft] on a `block_kv` net checks all the guesses at once:
decode on a BM1684X is bound by reading the weights, so a chunk of a few
positions costs about one decode step, and every accepted guess is a token
that needed no pass of its own.

This module is the device-free part, shared by the engine and by
`bench/lookup_acceptance.py` (which measures acceptance with a real model on
the host): the drafter, the acceptance rule, the gate that switches lookup off
when it does not pay, and the weight-pass accounting.  Pure Python, no imports
beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Sequence, Tuple


class NgramDrafter:
    """Drafts by n-gram match over the tokens seen so far (prompt and answer).

    For n from max_ngram down to min_ngram, the last n tokens are looked up
    among the n-grams that ended *earlier* in the sequence; the most recent
    match wins (in a conversation the latest quote of a passage is the one
    being continued), and up to max_draft tokens that followed it are proposed.
    Tokens are indexed as they arrive, so a lookup costs O(max_ngram).
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_draft: int = 4):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if max_draft < 1:
            raise ValueError("max_draft must be at least 1")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.max_draft = max_draft
        self.tokens: List[int] = []
        # n-gram -> index just past its most recent occurrence that is not the
        # sequence's current suffix (so what follows it is known).
        self._after: Dict[Tuple[int, ...], int] = {}

    def reset(self, tokens: Sequence[int] = ()) -> None:
        self.tokens = []
        self._after = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self._index_suffix()
            self.tokens.append(int(t))

    def _index_suffix(self) -> None:
        """Register the n-grams ending at the current end: the token about to
        be appended is what follows them."""
        toks, end = self.tokens, len(self.tokens)
        for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
            self._after[tuple(toks[end - n:end])] = end

    def draft(self, limit: int | None = None) -> List[int]:
        """Up to min(limit, max_draft) tokens guessed to follow the sequence."""
        k = self.max_draft if limit is None else min(limit, self.max_draft)
        toks, end = self.tokens, len(self.tokens)
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, end), self.min_ngram - 1, -1):
            at = self._after.get(tuple(toks[end - n:end]))
            if at is not None:
                return toks[at:at + k]
        return []


def accept(draft: Sequence[int], picks: Sequence[int]) -> List[int]:
    """The tokens a chunk pass yields.

    picks[i] is the model's greedy choice after the chunk's row i, where row 0
    is the current token and row i > 0 is draft[i-1].  The draft is accepted
    while it agrees with the picks; then the model's own next pick is added.
    So the result is exactly what greedy decoding would have produced, 1 to
    len(draft) + 1 tokens.
    """
    out: List[int] = []
    for guess, pick in zip(draft, picks):
        out.append(pick)
        if guess != pick:
            return out
    out.append(picks[len(draft)])
    return out


@dataclass
class PassCost:
    """Cost of the device's passes, in weight passes (one = reading every weight once).

    A chunk pass over c positions reads the layers' weights once, like a decode
    step, plus a little compute per position.  The head is a separate net: on
    top-1 builds (token out, no logits) each chunk row needs a head launch of
    its own, each reading the head's weights again.
    """

    head_share: float  # the head's fraction of all weights (Qwen-7B: ~0.08)
    position_cost: float = 0.0  # compute per chunk position, in weight passes
    heads_per_row: bool = True  # top-1 heads: one launch per chunk row

    def decode(self) -> float:
        return 1.0

    def chunk(self, positions: int) -> float:
        layers = 1.0 - self.head_share + self.position_cost * positions
        heads = self.head_share * (positions if self.heads_per_row else 1)
        return layers + heads


class LookupGate:
    """Switches lookup off while it does not pay, and probes again later.

    It keeps a decaying average of the weight passes spent per generated token
    by chunk passes; when that is worse than plain decoding (1.0), lookup pauses
    for `backoff` plain steps, then tries again.  Steps with no draft cost
    nothing extra (plain decode) and are not counted.
    """

    def __init__(self, cost: PassCost, decay: float = 0.8, backoff: int = 16, margin: float = 0.97):
        self.cost = cost
        self.decay = decay
        self.backoff = backoff
        self.margin = margin  # lookup must beat plain decoding by this factor
        self.passes_per_token = 0.0  # decaying average over chunk passes
        self._seen = False
        self._paused = 0

    def allow(self) -> bool:
        if self._paused > 0:
            self._paused -= 1
            return False
        return True

    def record(self, positions: int, produced: int) -> None:
        ppt = self.cost.chunk(positions) / max(1, produced)
        if not self._seen:
            self.passes_per_token, self._seen = ppt, True
        else:
            self.passes_per_token = self.decay * self.passes_per_token + (1 - self.decay) * ppt
        if self.passes_per_token > self.margin * self.cost.decode():
            self._paused = self.backoff
            self._seen = False  # start the average afresh after the pause


@dataclass
class LookupStats:
    """What lookup did during one answer (reported in stats and bench)."""

    chunk_passes: int = 0
    decode_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0  # tokens produced by the passes counted here
    weight_passes: float = 0.0

    def add_chunk(self, cost: PassCost, draft_len: int, produced: int) -> None:
        self.chunk_passes += 1
        self.drafted += draft_len
        self.accepted += produced - 1
        self.tokens += produced
        self.weight_passes += cost.chunk(draft_len + 1)

    def add_decode(self, cost: PassCost) -> None:
        self.decode_passes += 1
        self.tokens += 1
        self.weight_passes += cost.decode()

    @property
    def passes_per_token(self) -> float:
        return self.weight_passes / self.tokens if self.tokens else 0.0

    @property
    def accepted_per_chunk(self) -> float:
        return self.accepted / self.chunk_passes if self.chunk_passes else 0.0


def lookup_decode(
    token: int,
    budget: int,
    drafter: NgramDrafter,
    gate: LookupGate,
    decode: Callable[[int], int],
    verify: Callable[[int, List[int]], List[int]],
    drop: Callable[[int], None],
    stats: LookupStats,
) -> Iterator[int]:
    """Yield up to `budget` greedy tokens that follow `token`, by lookup where it pays.

    decode(token) feeds `token` and returns the model's next pick (one pass);
    verify(token, draft) feeds [token] + draft as one chunk and returns the
    model's pick after each of its rows (len(draft) + 1 picks); drop(n) then
    forgets the chunk's last n rows (the rejected guesses), so the cache holds
    exactly the rows of `token` and the accepted guesses, and the rejected
    rows are never seen again (the next pass overwrites them).  `drafter` already holds the
    sequence up to and including `token`.  The tokens equal plain greedy
    decoding's; only the number of passes differs.
    """
    while budget > 0:
        draft = drafter.draft(limit=budget - 1)
        if draft and gate.allow():
            out = accept(draft, verify(token, draft))
            if len(out) <= len(draft):
                drop(len(draft) + 1 - len(out))
            stats.add_chunk(gate.cost, len(draft), len(out))
            gate.record(len(draft) + 1, len(out))
        else:
            out = [decode(token)]
            stats.add_decode(gate.cost)
        drafter.extend(out)
        for t in out:
            yield t
        budget -= len(out)
        token = out[-1]
