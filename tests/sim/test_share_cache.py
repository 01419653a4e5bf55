"""LLM-TPU's share-cache layout (models/Qwen1_5/share_cache_demo) on the simulator.

The fixture (tpuchat/compiler/seed_share.py) is the tiny random Qwen2 exported
net by net in that layout: a shared part of SHARE rows (embedding, block_N), an
unshared part of UNSHARE rows (embedding_unshare, block_unshare_N over the first
SHARE cache rows) and decode nets over KV = SHARE + UNSHARE rows, compiled with
model_transform / model_deploy / model_tool --combine.  In tpuchat the shared
part is the pinned prefix (--prefix-file): many questions over one document."""

from __future__ import annotations

import pytest

from tests.fixtures import models
from tests.fixtures.compare import assert_follows_reference, first_flip, generate
from tpuchat.errors import TpuchatError
from tpuchat.runtime import bmodel_nets

pytestmark = pytest.mark.sim

VARIANT = "seed-share-cache"
SHARE, UNSHARE, KV, HIDDEN, KVH, HEAD_DIM, VOCAB, LAYERS = 128, 64, 192, 128, 2, 32, 512, 2
DOCUMENT = [(7 * i + 30) % 500 for i in range(90)]  # the pinned prefix: 90 of the 128 shared rows
QUESTIONS = ([100 + i for i in range(17)], [200 + i for i in range(9)])


def follows(prompt, device, ref):
    """device tokens == transformers' (ref: one batched models.reference result for prompt, maybe
    longer); after a bf16 near-tie flip transformers is asked again from the device's own path
    (compare.py), so every token is compared."""
    n = len(device)
    if first_flip(device, {k: ref[k][:n] for k in ("ids", "margins", "top2")}) is not None:
        assert_follows_reference(VARIANT, prompt, device)


def io(net):
    s = net.stages[0]
    return [(t.dtype, t.shape) for t in s.inputs], [(t.dtype, t.shape) for t in s.outputs]


def kv(rows):
    return ("bf16", [1, rows, KVH, HEAD_DIM])


def test_share_cache_nets_are_the_pipelines(build):
    build(VARIANT)
    nets = bmodel_nets.read(models.bmodel_path(VARIANT))
    assert {n.name for n in nets.nets} == {
        "embedding", "embedding_unshare", "embedding_cache", "lm_head", "greedy_head", "penalty_sample_head",
        *(f"block{c}_{i}" for c in ("", "_unshare", "_cache") for i in range(LAYERS))}
    for name, rows in (("embedding", SHARE), ("embedding_unshare", UNSHARE), ("embedding_cache", 1)):
        assert io(nets.net(name)) == ([("int32", [1, rows])], [("bf16", [1, rows, HIDDEN])])
    assert io(nets.net("penalty_sample_head"))[0][1] == ("int32", [1, KV])
    for i in range(LAYERS):
        block, unshare, cache = (nets.net(f"block{c}_{i}") for c in ("", "_unshare", "_cache"))
        assert io(block) == ([("bf16", [1, SHARE, HIDDEN]), ("int32", [1, SHARE]), ("bf16", [1, 1, SHARE, SHARE])],
                             [("bf16", [1, SHARE, HIDDEN]), kv(SHARE), kv(SHARE)])
        assert io(unshare) == ([("bf16", [1, UNSHARE, HIDDEN]), ("int32", [1, UNSHARE]),
                                ("bf16", [1, 1, UNSHARE, SHARE + UNSHARE]), kv(SHARE), kv(SHARE)],
                               [("bf16", [1, UNSHARE, HIDDEN]), kv(UNSHARE), kv(UNSHARE)])
        assert io(cache) == ([("bf16", [1, 1, HIDDEN]), ("int32", [1, 1]), ("bf16", [1, 1, 1, KV + 1]), kv(KV), kv(KV)],
                             [("bf16", [1, 1, HIDDEN]), kv(1), kv(1)])
        # compile.sh: only the decode nets are io_alone
        assert (block.addr_mode, unshare.addr_mode, cache.addr_mode) == (0, 0, 1)
        assert not (block.dynamic or unshare.dynamic or cache.dynamic)


def test_questions_after_a_pinned_document(open_variant):
    """Each question runs only the unshared nets over the pinned document's rows; the
    second one reuses the same shared rows.  Tokens follow transformers'."""
    client, desc = open_variant(VARIANT)
    assert desc.convention == "LLM-TPU share-cache (share 128, unshare 64)"
    assert client.pin_prefix(DOCUMENT)["tokens"] == len(DOCUMENT)
    refs = models.reference(VARIANT, [DOCUMENT + q for q in QUESTIONS], 6)
    for q, ref in zip(QUESTIONS, refs):
        got, stats = generate(client, DOCUMENT + q, 6)
        assert stats.reused_tokens == len(DOCUMENT) and stats.new_tokens == 6
        follows(DOCUMENT + q, got, ref)


def test_prompts_the_layout_does_not_serve_as_asked(open_variant):
    """A prompt that does not start with the pinned document, and one whose question is
    longer than the unshared part, are cut afresh (their own first SHARE tokens as the shared
    part): right tokens, nothing reused.  The document then comes back from its pinned copy.
    A prefix longer than the shared part is refused in one line; an answer that fills the
    unshared rows stops as a full context."""
    client, _ = open_variant(VARIANT)
    client.pin_prefix(DOCUMENT)
    other = [(11 * i + 5) % 500 for i in range(150)]  # 128 shared rows + 22 unshared
    long_question = DOCUMENT + [300 + i for i in range(UNSHARE + 8)]  # 162 tokens: no room after the document
    filling = DOCUMENT + [400 + i for i in range(UNSHARE - 3)]  # 61 unshared rows: 3 left for the answer
    prompts = (long_question, other, DOCUMENT + QUESTIONS[1], filling)
    refs = models.reference(VARIANT, list(prompts), 4)
    for prompt, ref in zip(prompts[:2], refs):  # (other's rows replace the document's in the cache)
        got, stats = generate(client, prompt, 3)
        assert stats.reused_tokens == 0
        follows(prompt, got, ref)
    got, stats = generate(client, prompts[2], 3)  # the document's rows come back from the pinned copy
    assert stats.reused_tokens == len(DOCUMENT)
    follows(prompts[2], got, refs[2])
    with pytest.raises(TpuchatError) as e:
        client.pin_prefix(other)
    assert "\n" not in str(e.value) and "share length" in str(e.value)
    client.pin_prefix(DOCUMENT)
    got, stats = generate(client, filling, 10)
    assert stats.stop_reason == "context_full" and len(got) == 4  # the prefill's token + 3 decode rows
    follows(filling, got, refs[3])
