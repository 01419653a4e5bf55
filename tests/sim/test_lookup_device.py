"""Prompt-lookup decoding on the simulator: block_kv chunks checked against
transformers' greedy tokens, with lookup on and off.

The prompts are chosen so that drafts really are accepted, and so that no
step of the answers is a near-tie (top-1 minus top-2 logit at least 0.06 in
transformers, where bf16 differs by ~0.01): this tiny random model answers
PROMPT with a cycle (295 6 295 401 ...), and a prompt that already holds the
start of that answer (PROMPT + its first 8 tokens) is continued by the rest
of it, so the cycle is drafted from the prompt.  lookup="always" keeps the
gate from pausing lookup (on the simulator a chunk costs more wall time
than the passes it saves).
"""

import functools

import pytest

from tests.fixtures import models
from tests.fixtures.compare import generate as gen

pytestmark = pytest.mark.sim

VARIANT = "qwen2-history"  # llm_convert --use_history_kv: block_kv nets
PROMPT = [316, 194, 139, 73, 98, 446, 349, 6] * 3


@functools.lru_cache(maxsize=None)
def answer():
    """transformers' greedy answer to PROMPT (12 tokens)."""
    return models.reference_greedy(VARIANT, [PROMPT], 12)[0]


@functools.lru_cache(maxsize=None)
def follow_ups():
    """The later turns both tests ask, with transformers' answers (one reference run)."""
    a = answer()
    after_answer = PROMPT + a + [20, 21, 22]  # the whole answer, then a new question
    after_stop = PROMPT + a[:11] + [20, 21, 22]  # see test_stop_and_max_tokens_inside_chunks
    return dict(zip(("after_answer", "after_stop"), models.reference_greedy(VARIANT, [after_answer, after_stop], 4))), \
        after_answer, after_stop


def test_lookup_gives_plain_greedy_tokens_and_the_next_turn_reuses_its_rows(open_variant):
    c, desc = open_variant(VARIANT)
    assert desc.block_kv
    ref = answer()
    plain, sp = gen(c, PROMPT, 12, lookup=False)
    look, sl = gen(c, PROMPT, 12, lookup="always")
    assert plain == look == ref
    assert sp.lookup_chunks == 0 and sp.passes_per_token == 1.0
    # Chunks ran, some drafts were accepted (the cycle) and some rejected (their rows dropped).
    assert sl.lookup_chunks >= 2 and sl.lookup_accepted >= 4 and sl.lookup_drafted > sl.lookup_accepted
    assert sl.passes_per_token < 0.8 and sl.stop_reason == "max_tokens"
    # The next turn keeps every row plain decoding keeps, and no rejected row leaks into its answer.
    refs, after_answer, _ = follow_ups()
    out, s2 = gen(c, after_answer, 4, lookup="always")
    assert s2.reused_tokens == len(PROMPT) + len(look) - 1
    assert out == refs["after_answer"]


def test_stop_and_max_tokens_inside_chunks(open_variant):
    """PROMPT + the first 8 answer tokens: the answer goes on with a[8:], and the
    first chunk drafts a[9:13] from the prompt (two accepted: a[9], a[10]).
    a[10] as a stop token stops the answer after a[8], a[9], though the
    chunk ran past it."""
    c, _ = open_variant(VARIANT)
    a = answer()
    ids = PROMPT + a[:8]
    assert a[10] not in a[8:10]  # so plain decoding stops at a[10] too
    out, st = gen(c, ids, 3, lookup="always")
    # max_new_tokens: drafts stop short of it (one drafted token, none computed past the end).
    assert out == a[8:11] and st.stop_reason == "max_tokens"
    assert st.lookup_chunks == 1 and st.lookup_drafted == 1 and st.lookup_accepted == 1
    out, st = gen(c, ids, 12, stops=[a[10]], lookup="always")
    assert out == a[8:10] and st.stop_reason == "eos" and st.new_tokens == 2
    assert st.lookup_chunks == 1 and st.lookup_accepted == 2  # the chunk computed rows past the stop token
    # Those rows are forgotten: the next turn reuses the prompt and the two answer tokens only.
    refs, _, after_stop = follow_ups()
    nxt, s2 = gen(c, after_stop, 4, lookup="always")
    assert s2.reused_tokens == len(ids) + 2
    assert nxt == refs["after_stop"]


def test_lookup_asked_of_a_bmodel_without_block_kv_decodes_plainly(open_variant):
    c, desc = open_variant("qwen2-bf16")
    assert not desc.block_kv
    out, st = gen(c, PROMPT, 3, lookup="always")
    assert out == models.reference_greedy("qwen2-bf16", [PROMPT], 3)[0]
    assert st.lookup_chunks == 0 and st.passes_per_token == 1.0
