"""Sampling and KV reuse across turns, on the simulator."""

import pytest

from tests.fixtures import models
from tests.fixtures.compare import generate as gen
from tpuchat.errors import PromptTooLong, TpuchatError

pytestmark = pytest.mark.sim


PROMPT = list(range(20, 45))


# -- sampling -------------------------------------------------------------------


def test_sampling_is_seeded_and_temperature_zero_is_greedy(open_variant):
    c, _ = open_variant("qwen2-sample")
    # (each sample_head call costs seconds on the simulator: few tokens per run)
    greedy, _ = gen(c, PROMPT, 5)
    assert greedy == models.reference_greedy("qwen2-sample", [PROMPT], 5)[0]
    assert gen(c, PROMPT, 5, {"sample": True, "temperature": 0.0, "seed": 5})[0] == greedy
    a = gen(c, PROMPT, 5, {"sample": True, "temperature": 1.0, "seed": 1})[0]
    b = gen(c, PROMPT, 5, {"sample": True, "temperature": 1.0, "seed": 1})[0]
    other = gen(c, PROMPT, 5, {"sample": True, "temperature": 1.0, "seed": 2})[0]
    assert a == b and a != other and a != greedy


def test_host_sampler_draws_what_the_devices_sample_head_draws(open_variant):
    """Same settings and seed: the C host sampler (used for logits-only
    builds) and Sophgo's on-device sample_head pick the same tokens.  (top_p
    is left at 1: the device keeps at least 5 candidates and cuts where the
    cumulative probability reaches top_p, Hugging Face, and the host, after.)"""
    c, _ = open_variant("qwen2-sample")
    s = {"sample": True, "temperature": 0.8, "top_k": 20, "repetition_penalty": 1.3, "seed": 7}
    device = gen(c, PROMPT, 6, s)[0]
    host = gen(c, PROMPT, 6, dict(s, on_host=True))[0]
    assert device == host


def test_repetition_penalty_reduces_repeats(open_variant):
    c, _ = open_variant("qwen2-sample")
    ids = [100, 101, 102] * 8
    greedy, _ = gen(c, ids, 12)
    # Near-zero temperature: greedy on the penalised logits.
    penalised, _ = gen(c, ids, 12, {"sample": True, "temperature": 0.05, "repetition_penalty": 5.0, "seed": 1})
    assert len(set(greedy)) < len(greedy)  # this model loops greedily...
    assert len(set(penalised)) > len(set(greedy))  # ...and the penalty breaks the loop


def test_sampling_on_a_top1_build_is_refused_clearly(open_variant):
    c, _ = open_variant("qwen2-bf16")
    with pytest.raises(TpuchatError, match="sampling is not available"):
        gen(c, PROMPT, 2, {"sample": True, "temperature": 0.7})
    assert gen(c, PROMPT, 2)[0]  # greedy still works


def test_greedy_head_path_is_chosen_by_measured_cost_and_remembered(sim_lib, build, tmp_path, monkeypatch):
    """A logits lm_head with a greedy_head: the shim times the host argmax and
    the device head once each, keeps the cheaper, and the engine remembers
    both costs per bmodel and runtime so the next open measures nothing.
    Forcing the host path gives the same tokens."""
    from tpuchat.runtime import runtime_checks
    from tpuchat.runtime.client import EngineClient

    monkeypatch.setenv("TPUCHAT_STATE", str(tmp_path / "state"))  # the worker inherits it
    build("qwen2-sample")
    bmodel = str(models.bmodel_path("qwen2-sample"))
    ref = models.reference_greedy("qwen2-sample", [PROMPT], 4)[0]
    with EngineClient() as c:
        c.open(bmodel, [0], sim_lib)
        assert gen(c, PROMPT, 4)[0] == ref  # token 1 on the host, token 2 on the device, then the cheaper
    device_us, host_us = runtime_checks.head_costs(sim_lib, bmodel)
    assert device_us > 0 and host_us > 0
    # Every token by the host argmax, decode steps included (the token is then uploaded, not left on the device).
    monkeypatch.setenv("TPUCHAT_HEAD", "host")
    with EngineClient() as c:
        c.open(bmodel, [0], sim_lib)
        assert gen(c, PROMPT, 4)[0] == ref


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"temperature": -1.0}, {"top_k": -3}, {"repetition_penalty": 0.0}])
def test_bad_sampling_settings(open_variant, bad):
    c, _ = open_variant("qwen2-sample")
    with pytest.raises(TpuchatError, match="bad sampling settings"):
        gen(c, PROMPT, 2, dict({"sample": True, "temperature": 0.7}, **bad))


# -- KV reuse across turns ---------------------------------------------------------


@pytest.mark.parametrize("variant, appends", [("qwen2-bf16", "decode"), ("qwen2-history", "block_kv")])
def test_turn_by_turn_equals_full_reprefill(open_variant, variant, appends):
    c, _ = open_variant(variant)
    turn1 = PROMPT + [7, 8]
    a1, s1 = gen(c, turn1, 4)
    assert s1.reused_tokens == 0
    turn2 = turn1 + a1 + [9, 10, 11]  # the next turn's prompt repeats the answer
    # "always": a static build appends by decode steps only when its measured
    # costs say so; pin that path here (block_kv builds always append).
    a2, s2 = gen(c, turn2, 4, reuse="always")
    # Every fed token stays cached; the last answer token was never fed.
    assert s2.reused_tokens == len(turn1) + len(a1) - 1
    fresh, s_fresh = gen(c, turn2, 4, reuse=False)
    assert s_fresh.reused_tokens == 0
    assert a2 == fresh == models.reference_greedy(variant, [turn2], 4)[0]


def test_an_edited_turn_keeps_only_the_common_prefix(open_variant):
    c, _ = open_variant("qwen2-history")
    gen(c, PROMPT + [7, 8, 9], 3)
    edited = PROMPT + [50, 51]
    out, stats = gen(c, edited, 4)
    assert stats.reused_tokens == len(PROMPT)
    assert out == models.reference_greedy("qwen2-history", [edited], 4)[0]


def test_regenerating_the_same_prompt(open_variant):
    c, _ = open_variant("qwen2-history")
    first, _ = gen(c, PROMPT, 4)
    again, stats = gen(c, PROMPT, 4)
    assert again == first and stats.reused_tokens == len(PROMPT) - 1


def test_prompt_longer_than_one_prefill_is_appended(open_variant):
    """S = 64 here (--max_input_length 64, KV length 256): the first 64
    tokens are prefilled, the rest appended by decode steps."""
    c, _ = open_variant("qwen2-maxinput")
    ids = (PROMPT * 3)[:70]
    out, _ = gen(c, ids, 3)
    assert out == models.reference_greedy("qwen2-maxinput", [ids], 3)[0]
    with pytest.raises(PromptTooLong, match="at most 256"):
        gen(c, (PROMPT * 12)[:257], 1)


# -- shared prefix -----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["qwen2-history", "qwen2-bf16"])
def test_a_pinned_prefix_is_reused_after_other_prompts(open_variant, variant):
    """A pinned prefix (a shared document) comes back by device copies after
    an unrelated prompt overwrote the cache; answers stay exact."""
    c, _ = open_variant(variant)
    doc = list(range(60, 100))
    pinned = c.pin_prefix(doc)
    assert pinned["tokens"] == len(doc)
    q1 = doc + [7, 8, 9]
    out1, s1 = gen(c, q1, 3, reuse="always")  # pin the append path (see above)
    assert s1.reused_tokens == len(doc)
    gen(c, PROMPT, 3)  # another conversation takes the cache
    q2 = doc + [11, 12]
    out2, s2 = gen(c, q2, 3, reuse="always")
    assert s2.reused_tokens == len(doc)
    assert [out1, out2] == models.reference_greedy(variant, [q1, q2], 3)
    c.pin_prefix([])  # dropped: the next question after another prompt starts afresh
    gen(c, PROMPT, 1)
    _, s3 = gen(c, q2, 3)
    assert s3.reused_tokens == 0


def test_a_prefix_that_fills_the_context_is_refused(open_variant):
    c, desc = open_variant("qwen2-history")
    with pytest.raises(PromptTooLong, match="shared prefix"):
        c.pin_prefix([5] * desc.kv_len)
    out, _ = gen(c, PROMPT, 2)  # the model still works
    assert out == models.reference_greedy("qwen2-history", [PROMPT], 2)[0]
