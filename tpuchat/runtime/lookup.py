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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple


class NgramDrafter:
    """Drafts by n-gram match over the tokens seen so far (prompt and answer).

    For n from max_ngram down to min_ngram, the last n tokens are looked up
    among the n-grams that ended *earlier* in the sequence; the most recent
    match wins (in a conversation the latest quote of a passage is the one
    being continued), and up to max_draft tokens that followed it are proposed
    (a match that ends near the end, as in a run or a short cycle, continues
    periodically).
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
                # Past the end the match's continuation is the draft itself
                # (a run or a short cycle repeats with period end - at).
                out: List[int] = []
                for j in range(at, at + k):
                    out.append(toks[j] if j < end else out[j - end])
                return out
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


class MeasuredCost:
    """Pass costs from measured wall times, in decode steps: what a chunk of
    c positions really costs on this machine, whatever the weight model says
    (a static block_kv net computes all its rows; heads, copies and syncs
    add per row).  The gate reads it like a PassCost; `prior` stands in
    until a decode step and a chunk have been timed, and a chunk length not
    timed yet is scaled from the nearest timed one by the prior's ratio."""

    def __init__(self, prior: PassCost, decay: float = 0.7):
        self.prior = prior
        self.decay = decay
        self.decode_s: Optional[float] = None
        self.chunk_s: Dict[int, float] = {}

    def _avg(self, old: Optional[float], new: float) -> float:
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def note_decode(self, seconds: float) -> None:
        self.decode_s = self._avg(self.decode_s, seconds)

    def note_chunk(self, positions: int, seconds: float) -> None:
        self.chunk_s[positions] = self._avg(self.chunk_s.get(positions), seconds)

    def decode(self) -> float:
        return 1.0

    def chunk(self, positions: int) -> float:
        if not self.decode_s or not self.chunk_s:
            return self.prior.chunk(positions)
        if positions in self.chunk_s:
            return self.chunk_s[positions] / self.decode_s
        near = min(self.chunk_s, key=lambda p: (abs(p - positions), p))
        return self.chunk_s[near] / self.decode_s * self.prior.chunk(positions) / self.prior.chunk(near)


class LookupGate:
    """Switches lookup off while it does not pay, and probes again later.

    It keeps a decaying average of the cost spent per generated token by
    chunk passes (in decode steps: `cost` is a PassCost or a MeasuredCost);
    when that is worse than plain decoding (1.0), lookup pauses for
    `backoff` plain steps, then tries again.  A probe that fails at once
    doubles the pause (up to max_backoff), so text that never repeats pays
    for one chunk in that many steps; a chunk that pays resets it.  Steps
    with no draft cost nothing extra (plain decode) and are not counted.
    backoff=0 never pauses (tests that pin the lookup path).
    """

    def __init__(self, cost, decay: float = 0.8, backoff: int = 16, margin: float = 0.97,
                 max_backoff: int = 64):
        self.cost = cost
        self.decay = decay
        self.backoff = backoff
        self.max_backoff = max(backoff, max_backoff)
        self.margin = margin  # lookup must beat plain decoding by this factor
        self.passes_per_token = 0.0  # decaying average over chunk passes
        self._seen = False
        self._paused = 0
        self._pause = backoff  # the next pause

    def allow(self) -> bool:
        if self._paused > 0:
            self._paused -= 1
            return False
        return True

    def record(self, positions: int, produced: int) -> None:
        ppt = self.cost.chunk(positions) / max(1, produced)
        probe = not self._seen
        if probe:
            self.passes_per_token, self._seen = ppt, True
        else:
            self.passes_per_token = self.decay * self.passes_per_token + (1 - self.decay) * ppt
        if self.passes_per_token > self.margin * self.cost.decode():
            self._paused = self._pause
            self._pause = min(self.max_backoff, self._pause * 2) if probe else self.backoff
            self._seen = False  # start the average afresh after the pause
        else:
            self._pause = self.backoff


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
    cost: Optional[PassCost] = None,
) -> Iterator[int]:
    """Yield up to `budget` greedy tokens that follow `token`, by lookup where it pays.

    decode(token) feeds `token` and returns the model's next pick (one pass);
    verify(token, draft) feeds [token] + draft as one chunk and returns the
    model's pick after each of its rows (len(draft) + 1 picks); drop(n) then
    forgets the chunk's last n rows (the rejected guesses), so the cache holds
    exactly the rows of `token` and the accepted guesses, and the rejected
    rows are never seen again (the next pass overwrites them).  `drafter` already holds the
    sequence up to and including `token`.  The tokens equal plain greedy
    decoding's; only the number of passes differs.  `stats` counts weight
    passes with `cost` (default: the gate's cost, when that is a PassCost).
    """
    cost = cost or gate.cost
    while budget > 0:
        draft = drafter.draft(limit=budget - 1)
        if draft and gate.allow():
            out = accept(draft, verify(token, draft))
            if len(out) <= len(draft):
                drop(len(draft) + 1 - len(out))
            stats.add_chunk(cost, len(draft), len(out))
            gate.record(len(draft) + 1, len(out))
        else:
            out = [decode(token)]
            stats.add_decode(cost)
        drafter.extend(out)
        for t in out:
            yield t
        budget -= len(out)
        token = out[-1]
