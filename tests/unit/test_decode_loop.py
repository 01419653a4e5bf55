"""The engine's token loop (tpuchat/runtime/decode_loop.py): lookup decoding
ends an answer exactly where plain decoding does and leaves the same KV rows.

The model here is a scripted next-token rule over the cached rows with the
binding Model's calls (decode, chunk_picks, rewind, position, last_timing);
it stands in for no device.  The device path is checked against
transformers on the simulator in test_lookup_device.py.
"""

import random

import pytest

from tpuchat.runtime.decode_loop import LookupPlan, decode_loop
from tpuchat.runtime.lookup import MeasuredCost, PassCost
from tpuchat.runtime.protocol import GenerationStats


class RowModel:
    """Next token = rule(cached rows); the rows are what a KV cache would hold."""

    def __init__(self, rule, prompt, kv_len):
        self.rule = rule
        self.kv_len = kv_len
        self.rows = list(prompt)
        self.chunks = self.decodes = 0
        self.peak = len(self.rows)  # most rows ever cached

    @property
    def position(self):
        return len(self.rows)

    def decode(self, token):
        assert len(self.rows) < self.kv_len, "decode past the KV length"
        self.decodes += 1
        self.rows.append(token)
        self.peak = max(self.peak, len(self.rows))
        return self.rule(self.rows)

    def chunk_picks(self, ids):
        assert len(self.rows) + len(ids) <= self.kv_len, "chunk past the KV length"
        self.chunks += 1
        picks = []
        for t in ids:
            self.rows.append(t)
            picks.append(self.rule(self.rows))
        self.peak = max(self.peak, len(self.rows))
        return picks

    def rewind(self, position):
        del self.rows[position:]

    def last_timing(self):
        return 1000.0, 800.0, 200.0, 4, 2


_rng = random.Random(5)
TEXT = [_rng.randrange(10, 60) for _ in range(30)]


def copy_rule(rows):
    """After the prompt, the model copies TEXT over and over: drafts get accepted."""
    i = len(rows) - len(TEXT) - 1
    return TEXT[i % len(TEXT)] if i >= 0 else 0


PROMPT = TEXT + [1]


def answer(lookup, max_new=40, stops=(), kv_len=256, should_stop=None):
    model = RowModel(copy_rule, PROMPT, kv_len)
    first = copy_rule(model.rows)
    st = GenerationStats()
    prior = PassCost(head_share=0.1)
    plan = LookupPlan(prior, MeasuredCost(prior), max_draft=4, pinned=True) if lookup else None
    out = list(decode_loop(model, first, PROMPT, max_new, set(stops), should_stop, kv_len, st, plan))
    return out, st, model


def test_lookup_gives_plain_decodings_tokens_in_fewer_passes():
    plain, sp, mp = answer(False)
    got, st, m = answer(True)
    assert got == plain and st.stop_reason == sp.stop_reason == "max_tokens"
    assert m.rows == mp.rows == PROMPT + got[:-1]  # every answer token but the last is cached
    assert st.lookup_chunks == m.chunks > 0 and st.lookup_accepted > 2 * st.lookup_chunks
    assert st.passes_per_token < 0.5 and sp.passes_per_token == 1.0 and sp.lookup_chunks == 0
    assert st.new_tokens == sp.new_tokens == 40


def test_a_stop_token_inside_an_accepted_draft_ends_the_answer_there():
    stop = TEXT[9]  # copied at answer index 9, inside a chunk of accepted drafts
    assert stop not in TEXT[:9]
    plain, sp, mp = answer(False, stops=[stop])
    got, st, m = answer(True, stops=[stop])
    assert got == plain == TEXT[:9] and st.stop_reason == sp.stop_reason == "eos"
    # The chunk ran past the stop token; those rows are forgotten.
    assert m.rows == mp.rows == PROMPT + got
    assert st.new_tokens == 9 and st.lookup_chunks > 0


@pytest.mark.parametrize("max_new", [1, 2, 7, 8, 13])
def test_drafts_stop_short_of_max_new_tokens(max_new):
    plain, _, mp = answer(False, max_new=max_new)
    got, st, m = answer(True, max_new=max_new)
    assert got == plain == TEXT[:max_new] and st.stop_reason == "max_tokens"
    assert m.rows == mp.rows == PROMPT + got[:-1]
    assert m.peak == len(PROMPT) + max_new - 1  # no chunk computed a row past the last token's
    assert (st.lookup_chunks > 0) == (max_new >= 3)


@pytest.mark.parametrize("at", [3, 4, 6])
def test_cancel_between_tokens_of_one_chunk(at):
    def after(n):
        calls = []

        def should_stop():
            calls.append(1)
            return len(calls) >= n
        return should_stop

    plain, sp, mp = answer(False, should_stop=after(at))
    got, st, m = answer(True, should_stop=after(at))
    assert got == plain and len(got) == at and st.stop_reason == sp.stop_reason == "cancelled"
    assert m.rows == mp.rows == PROMPT + got[:-1]


@pytest.mark.parametrize("room", [1, 3, 10])
def test_a_full_context_ends_both_alike_and_no_chunk_passes_the_kv_length(room):
    kv_len = len(PROMPT) + room
    plain, sp, mp = answer(False, kv_len=kv_len)
    got, st, m = answer(True, kv_len=kv_len)  # RowModel asserts no pass goes past kv_len
    assert got == plain and len(got) == room + 1 and st.stop_reason == sp.stop_reason == "context_full"
    assert m.rows == mp.rows and len(m.rows) == kv_len


def test_stats_are_per_token_after_the_first():
    got, st, m = answer(True, max_new=21)
    passes = m.chunks + m.decodes
    assert st.launches_per_token == pytest.approx(4 * passes / 20)
    assert st.device_ms_per_token == pytest.approx(0.8 * passes / 20)
    assert st.tokens_per_s > 0 and passes < 10
