"""Token-exact generation on the simulator against transformers.

Each variant is a tiny random Qwen2/Llama compiled by llm_convert; the
reference ids come from transformers' greedy generate on the same source
model (computed once in the compiler venv and cached)."""

import pytest

from tests.fixtures import models
from tests.fixtures.compare import generate
from tpuchat.errors import PromptTooLong

pytestmark = pytest.mark.sim

TEXT = "The quick brown fox jumps over the lazy dog. 你好，世界！def f(x): return x * 2"


def prompt_ids(variant, n=None):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models.tokenizer_dir(variant) / "tokenizer.json"))
    ids = tok.encode(TEXT).ids
    while n is not None and len(ids) < n:
        ids = ids + ids
    return ids[:n] if n is not None else ids


EXACT = ["qwen2-bf16", "qwen2-f16", "qwen2-w8bf16", "qwen2-dynamic", "qwen2-sample", "qwen2-history",
         "qwen2-maxinput", "llama-bf16"]


@pytest.mark.parametrize("variant", EXACT)
def test_greedy_ids_equal_transformers(variant, open_variant):
    client, desc = open_variant(variant)
    ids = prompt_ids(variant)
    assert len(ids) >= 20
    got, stats = generate(client, ids, 10)
    want = models.reference_greedy(variant, [ids], 10)[0]
    assert got == want
    assert stats.prompt_tokens == len(ids) and stats.new_tokens == 10
    assert stats.stop_reason == "max_tokens"
    assert stats.ftl_s > 0 and stats.tokens_per_s > 0 and stats.device_ms_per_token > 0


def test_w4_matches_transformers_on_the_same_4bit_weights(open_variant):
    """A w4 build computes a different model: its Linear weights are rounded
    to 4 bits (groups of 64, asymmetric: llm_convert's defaults).  The
    reference applies the same rounding, then runs in float32; the device
    runs in bf16, so only genuine near-ties may flip.  Teacher-forced on the
    reference's own continuation, so one flip cannot derail later steps.
    (Against the unrounded model the same build agrees on only ~5 of 16
    steps with logit gaps over 1: that is quantisation, not the runtime.)"""
    variant = "qwen2-w4bf16"
    client, _ = open_variant(variant)
    ids = prompt_ids(variant)
    n = 16
    ref = models.reference(variant, [ids], n, logits=True, quant="w4")[0]
    picks = client.forced_picks(ids, ref["ids"])
    assert len(picks) == n
    agree = sum(p == w for p, w in zip(picks, ref["ids"]))
    gaps = [max(row) - row[p] for p, row in zip(picks, ref["logits"])]
    assert agree >= n - 2, (picks, ref["ids"])
    # 0.05 is ~3 bf16 steps at |logit| ~ 3: bf16 activations vs float32.
    assert max(gaps) < 0.05, gaps


def test_bmodel_description(open_variant):
    _, desc = open_variant("qwen2-bf16")
    assert desc.num_layers == 2 and desc.hidden_size == 128
    assert desc.kv_heads == 2 and desc.head_dim == 32
    assert desc.seq_len == 256 and desc.kv_len == 256
    assert desc.dtype == "bf16" and desc.lm_head == "top1" and not desc.dynamic
    assert desc.num_device == 1 and desc.chip == "BM1684X"
    assert desc.runtime.kind == "simulator"


def test_description_of_other_builds(open_variant):
    _, d = open_variant("qwen2-sample")
    assert d.lm_head == "logits" and d.vocab_size > 0 and "greedy_head" in d.heads
    _, d = open_variant("qwen2-dynamic")
    assert d.dynamic
    _, d = open_variant("qwen2-maxinput")
    assert d.seq_len == 64 and d.kv_len == 256
    _, d = open_variant("qwen2-f16")
    assert d.dtype == "f16"
    _, d = open_variant("qwen2-history")
    assert d.block_kv


def test_prompt_of_one_token(open_variant):
    client, _ = open_variant("qwen2-bf16")
    ids = prompt_ids("qwen2-bf16")[:1]
    got, _ = generate(client, ids, 8)
    assert got == models.reference_greedy("qwen2-bf16", [ids], 8)[0]


def test_prompt_of_exactly_s_tokens_fills_the_context(open_variant):
    # S == L here: the first token comes from prefill, then the cache is full.
    client, desc = open_variant("qwen2-bf16")
    ids = prompt_ids("qwen2-bf16", desc.seq_len)
    got, stats = generate(client, ids, 8)
    assert got == models.reference_greedy("qwen2-bf16", [ids], 1)[0]
    assert stats.stop_reason == "context_full"


def test_prompt_longer_than_the_kv_length_is_a_clear_error_and_the_engine_stays_usable(open_variant):
    client, desc = open_variant("qwen2-maxinput")
    L = desc.kv_len
    with pytest.raises(PromptTooLong, match=f"{L + 1} tokens.*at most {L}"):
        generate(client, prompt_ids("qwen2-maxinput", L + 1), 4)
    ids = prompt_ids("qwen2-maxinput", desc.seq_len)
    got, _ = generate(client, ids, 3)
    assert got == models.reference_greedy("qwen2-maxinput", [ids], 3)[0]


def test_generation_that_reaches_the_kv_length_stops_cleanly(open_variant):
    client, desc = open_variant("qwen2-bf16")
    n = desc.kv_len - 5
    ids = prompt_ids("qwen2-bf16", n)
    got, stats = generate(client, ids, 50)
    # 1 token from prefill + one per free KV row.
    assert len(got) == desc.kv_len - n + 1
    assert stats.stop_reason == "context_full"
    assert got == models.reference_greedy("qwen2-bf16", [ids], len(got))[0]


def test_stop_ids_end_the_answer_without_emitting_them(open_variant):
    client, _ = open_variant("qwen2-bf16")
    ids = prompt_ids("qwen2-bf16")
    want = models.reference_greedy("qwen2-bf16", [ids], 10)[0]
    stop = want[4]
    got, stats = generate(client, ids, 10, stops=[stop])
    assert got == want[: want.index(stop)]
    assert stats.stop_reason == "eos"


def test_second_prompt_on_the_same_engine_is_independent(open_variant):
    client, _ = open_variant("qwen2-bf16")
    a = prompt_ids("qwen2-bf16")
    b = a[5:] + a[:3]
    generate(client, a, 6)
    got, _ = generate(client, b, 6)
    assert got == models.reference_greedy("qwen2-bf16", [b], 6)[0]
