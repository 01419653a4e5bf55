"""The token loop after the prefill: plain decoding, or prompt-lookup
decoding through block_kv chunks.

One place decides when an answer ends (a stop token, max_new_tokens, a
cancel request, a full context) and which KV rows stay cached: exactly those
plain decoding keeps (the prompt and every answer token but the last), even
when one chunk pass produced several tokens past the end.  `model` is the
binding's Model (decode, chunk_picks, rewind, position, last_timing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Set

from ..errors import ContextFull
from .lookup import LookupGate, LookupStats, MeasuredCost, NgramDrafter, PassCost, lookup_decode
from .protocol import GenerationStats


@dataclass
class LookupPlan:
    """How to run lookup decoding for one answer."""

    pass_cost: PassCost  # weight passes, for the stats
    measured: MeasuredCost  # wall times, for the gate (kept across answers by the engine)
    max_draft: int = 4
    pinned: bool = False  # never paused by the gate (tests that pin the path)


@dataclass
class _Clock:
    """Time, device time, launches and copies of the passes of one answer."""

    model: object
    passes: int = 0
    wall_s: float = 0.0
    device_us: float = 0.0
    launches: float = 0.0
    copies: float = 0.0
    start: float = 0.0
    end: float = 0.0
    last_s: float = 0.0  # wall time of the latest pass

    def run(self, call: Callable, arg):
        t = time.perf_counter()
        if not self.passes:
            self.start = t
        result = call(arg)
        self.end = time.perf_counter()
        _, dev, _, n_launch, n_copy = self.model.last_timing()
        self.passes += 1
        self.wall_s += self.end - t
        self.device_us += dev
        self.launches += n_launch
        self.copies += n_copy
        self.last_s = self.end - t
        return result


def decode_loop(model, first: int, prompt_ids: Sequence[int], max_new_tokens: int, stops: Set[int],
                should_stop: Optional[Callable[[], bool]], kv_len: int, st: GenerationStats,
                plan: Optional[LookupPlan] = None) -> Iterator[int]:
    """Yield the answer from `first` (the prefill's pick) on; stop tokens are
    not yielded.  With a plan, greedy tokens come from lookup_decode (chunks
    where drafts exist and the gate allows, decode steps otherwise); the
    tokens are the same either way.  Fills st's decode figures and stop_reason."""
    base = model.position  # rows cached after the prefill
    clock = _Clock(model)
    lstats = LookupStats()

    def decode(token: int) -> int:
        out = clock.run(model.decode, token)
        if plan is not None:
            plan.measured.note_decode(clock.last_s)
        return out

    if plan is None:
        def passes(token: int) -> Iterator[int]:
            while True:
                token = decode(token)
                yield token
        source = passes(first)
    else:
        def verify(token: int, draft: List[int]) -> List[int]:
            picks = clock.run(model.chunk_picks, [token, *draft])
            plan.measured.note_chunk(len(draft) + 1, clock.last_s)
            return picks

        def drop(n: int) -> None:
            model.rewind(model.position - n)

        drafter = NgramDrafter(max_ngram=3, min_ngram=1, max_draft=plan.max_draft)
        drafter.extend([*prompt_ids, first])
        gate = LookupGate(plan.measured, backoff=0 if plan.pinned else 16)
        # Every pass keeps one row per token it yields, so this budget keeps
        # every chunk inside the KV length and max_new_tokens.
        budget = min(max_new_tokens - 1, kv_len - base)
        source = lookup_decode(first, budget, drafter, gate, decode, verify, drop, lstats, plan.pass_cost)

    produced = 1  # answer tokens computed so far (first included)
    token = first
    try:
        while True:
            if token in stops:
                st.stop_reason = "eos"
                break
            st.new_tokens += 1
            yield token
            if st.new_tokens >= max_new_tokens:
                st.stop_reason = "max_tokens"
                break
            if should_stop is not None and should_stop():
                st.stop_reason = "cancelled"
                break
            # Plain decoding's position here: the prompt and every answer token but this one.
            if base + produced - 1 >= kv_len:
                st.stop_reason = "context_full"
                break
            try:
                nxt = next(source, None)
            except ContextFull:  # a layout whose rows run out before kv_len (share-cache)
                st.stop_reason = "context_full"
                break
            if nxt is None:  # the budget ran out: cannot happen, the checks above come first
                st.stop_reason = "max_tokens" if st.new_tokens >= max_new_tokens else "context_full"
                break
            token = nxt
            produced += 1
    finally:
        # Forget rows computed past the end (a chunk may run beyond a stop
        # token, max_new_tokens or a cancel): the cache holds what plain
        # decoding would hold.
        if model.position > base + produced - 1:
            model.rewind(base + produced - 1)
        _finish(st, clock, produced - 1, lstats, plan)


def _finish(st: GenerationStats, clock: _Clock, tokens: int, lstats: LookupStats, plan: Optional[LookupPlan]) -> None:
    """Per-token figures over the tokens computed after the first (each plain
    decode step computes one; a chunk pass one or more)."""
    if not tokens or not clock.passes:
        return
    st.decode_s = clock.wall_s
    st.tokens_per_s = tokens / clock.wall_s if clock.wall_s > 0 else 0.0
    st.device_ms_per_token = clock.device_us / tokens / 1e3
    # Host time of a token: the passes outside the device, and the loop
    # around them (yield to the worker, its send, the cancel poll, drafting).
    st.worker_host_us_per_token = ((clock.end - clock.start) * 1e6 - clock.device_us) / tokens
    st.host_us_per_token = st.worker_host_us_per_token  # the client adds the pipe and itself
    st.launches_per_token = clock.launches / tokens
    st.copies_per_token = clock.copies / tokens
    if plan is None:
        st.passes_per_token = 1.0
        return
    st.lookup_chunks = lstats.chunk_passes
    st.lookup_drafted = lstats.drafted
    st.lookup_accepted = lstats.accepted
    st.passes_per_token = lstats.weight_passes / tokens
