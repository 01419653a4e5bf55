"""The shim's table of bmodel conventions (native/roles.c), driven through
its pure C entry point on descriptions of nets: synthetic ones written from
each seed pipeline's export scripts (sophgo/Qwen-TPU, sophon-demo Qwen1.5,
LLM-TPU WizardCoder / share-cache), and the llm_convert fixtures' own files.
No runtime or device is involved."""

from __future__ import annotations

import pytest

from tpuchat.errors import ModelError
from tpuchat.runtime.bmodel_nets import Net, Stage, Tensor
from tpuchat.runtime.binding import match_roles

S, H, KVH, D, V = 64, 128, 2, 32, 512


def T(name, dtype, shape, device=0):
    return Tensor(name, dtype, list(shape), device)


def net(name, inputs, outputs, stages=None, dynamic=False):
    """A net with one stage, or one stage per (inputs, outputs) pair in `stages`."""
    if stages is None:
        stages = [(inputs, outputs)]
    return Net(name, dynamic, 1, [Stage(i, o) for i, o in stages])


def block(name, rows=S, mask=True, dt="bf16"):
    ins = [T("input_states", dt, [1, rows, H]), T("position_ids", "int32", [1, rows])]
    if mask:
        ins.append(T("attention_mask", dt, [1, 1, rows, rows]))
    outs = [T("hidden_states", dt, [1, rows, H]), T("past_k", dt, [1, rows, KVH, D]), T("past_v", dt, [1, rows, KVH, D])]
    return net(name, ins, outs)


def block_cache(name, kv=S, mask_cols=None, dt="bf16"):
    ins = [T("input_states", dt, [1, 1, H]), T("position_ids", "int32", [1, 1]),
           T("attention_mask", dt, [1, 1, 1, mask_cols or kv + 1]),
           T("history_k", dt, [1, kv, KVH, D]), T("history_v", dt, [1, kv, KVH, D])]
    outs = [T("hidden_states", dt, [1, 1, H]), T("past_k", dt, [1, 1, KVH, D]), T("past_v", dt, [1, 1, KVH, D])]
    return net(name, ins, outs)


def embedding(name="embedding", rows=(S,), dynamic=False):
    stages = [([T("input_ids", "int32", [1, r])], [T("input_embed", "bf16", [1, r, H])]) for r in rows]
    return net(name, None, None, stages, dynamic)


def lm_head(top1=True):
    out = T("token", "int32", [1, 1]) if top1 else T("m_logits", "f32", [1, V])
    return net("lm_head", [T("hidden_states", "bf16", [1, H])], [out])


def layers(fmt_block, fmt_cache, n=2, **kw):
    return [block(fmt_block % i) for i in range(n)] + [block_cache(fmt_cache % i, **kw) for i in range(n)]


def llm_convert(top1=True):
    return [embedding(), embedding("embedding_cache", rows=(1,)), *layers("block_%d", "block_cache_%d"), lm_head(top1)]


def qwen_tpu():
    """sophgo/Qwen-TPU compile/export_onnx.py + compile.sh: one embedding net
    with a [1,1] stage 0 and a [1,SEQ] stage 1, qwen_block(_cache)_N."""
    return [embedding(rows=(1, S)), *layers("qwen_block_%d", "qwen_block_cache_%d"), lm_head(True)]


def penalty_sample_head(names=("m_logits", "input_ids", "top_p", "temperature", "penalty")):
    kinds = [("f32", [1, V]), ("int32", [1, S]), ("f32", [1]), ("f32", [1]), ("f32", [1])]
    ins = [T(n, dt, sh) for n, (dt, sh) in zip(names, kinds)]
    return net("penalty_sample_head", ins, [T("probs", "f32", [1, 50]), T("token", "int32", [1, 50])])


def greedy_head():
    return net("greedy_head", [T("m_logits", "f32", [1, V])], [T("token", "int32", [1, 1])])


def test_llm_convert_layout():
    r = match_roles(llm_convert())
    assert r["convention"] == "llm_convert"
    assert (r["num_layers"], r["embedding_cache"], r["decode_embed"]) == (2, "embedding_cache", "embedding_cache")
    assert r["sample_head"] is None


def test_qwen_tpu_embeds_decode_tokens_through_the_prefill_stage():
    r = match_roles(qwen_tpu())
    assert r["convention"] == "Qwen-TPU (qwen_block, 2-stage embedding)"
    assert r["num_layers"] == 2 and r["embedding_cache"] is None
    # stage 0 is the [1,1] one, which TPU-MLIR 1.30.2's runtime mis-runs: never used
    assert (r["decode_embed"], r["decode_embed_stage"]) == ("embedding prefill stage, row 0", 1)


def test_a_one_row_stage_after_the_prefill_stage_is_used_for_decode():
    nets = qwen_tpu()
    nets[0] = embedding(rows=(S, 1))
    r = match_roles(nets)
    assert (r["decode_embed"], r["decode_embed_stage"]) == ("1-row embedding stage", 1)


def test_sophon_demo_penalty_sample_head_inputs_are_mapped_by_name():
    r = match_roles(llm_convert(top1=False) + [greedy_head(), penalty_sample_head()])
    assert "penalty_sample_head" in r["convention"]
    assert r["greedy_head"] == "greedy_head" and r["sample_head"] == "penalty_sample_head"
    assert r["sample_inputs"] == {"logits": 0, "input_ids": 1, "top_p": 2, "temperature": 3, "penalty": 4, "top_k": -1}


def test_penalty_sample_head_with_unknown_names_is_mapped_by_position():
    r = match_roles(llm_convert(top1=False) + [penalty_sample_head(names=("a", "b", "c", "d", "e"))])
    assert r["sample_inputs"] == {"logits": 0, "input_ids": 1, "top_p": 2, "temperature": 3, "penalty": 4, "top_k": -1}


def test_a_sample_head_the_shim_cannot_feed_is_not_used():
    bad = penalty_sample_head()
    bad.stages[0].inputs[3] = T("temperature", "f32", [1, 4])  # not a scalar
    r = match_roles(llm_convert(top1=False) + [bad])
    assert r["sample_head"] is None and r["sample_inputs"] == {}


def wizardcoder(window_rows=S + 1):
    """LLM-TPU models/WizardCoder: a 2-stage embedding with input_pos, blocks of hidden + mask,
    decode nets of hidden + one K|V past_cache + mask returning the window plus the new row."""
    emb = net("embedding", None, None, stages=[
        ([T("input_ids", "int32", [1, r]), T("input_pos", "int32", [1, r])], [T("hidden", "f32", [1, r, H])])
        for r in (1, S)])
    blocks = [net(f"block_{i}", [T("hidden", "f32", [1, S, H]), T("mask", "f32", [1, 1, S, S])],
                  [T("hidden", "f32", [1, S, H]), T("past_cache", "f32", [1, S, 2 * D])]) for i in range(2)]
    caches = [net(f"block_cache_{i}", [T("hidden", "f32", [1, 1, H]), T("past_cache", "f32", [1, S, 2 * D]),
                                       T("mask", "f32", [1, 1, 1, S + 1])],
                  [T("hidden", "f32", [1, 1, H]), T("present", "f32", [1, window_rows, 2 * D])]) for i in range(2)]
    return [emb, *blocks, *caches, net("lm_head", [T("hidden_states", "f32", [1, H])], [T("token", "int32", [1, 1])])]


def test_wizardcoder_layout_is_matched_with_its_sliding_cache():
    r = match_roles(wizardcoder())
    assert r["convention"] == "WizardCoder (GPT-BigCode, sliding past_cache)"
    assert (r["kv_layout"], r["learned_positions"], r["mask_value"]) == ("sliding", True, -1000.0)
    assert r["num_layers"] == 2 and r["embedding_cache"] is None
    # its embedding's [1,1] stage comes first, which TPU-MLIR 1.30.2's runtime mis-runs: never used
    assert (r["decode_embed"], r["decode_embed_stage"]) == ("embedding prefill stage, row 0", 1)


def test_a_wizardcoder_decode_net_that_does_not_return_the_window_plus_one_is_refused():
    with pytest.raises(ModelError, match=r"^not an LLM bmodel[^\n]*block_cache_0 does not return hidden \+ the "
                                         r"L\+1-row cache[^\n]*$"):
        match_roles(wizardcoder(window_rows=1))


def test_share_cache_layout_is_recognised_by_its_unshared_nets():
    """LLM-TPU share_cache_demo: sophon-demo's nets plus embedding_unshare / block_unshare_N (the
    shim checks the unshared nets' shapes at open, share.c)."""
    unshare = [embedding("embedding_unshare", rows=(S // 2,))] + [block(f"block_unshare_{i}", rows=S // 2)
                                                                   for i in range(2)]
    r = match_roles(llm_convert(top1=False) + [greedy_head(), penalty_sample_head()] + unshare)
    assert r["convention"] == "LLM-TPU share-cache"
    assert (r["num_layers"], r["embedding_cache"], r["greedy_head"], r["sample_head"]) == (
        2, "embedding_cache", "greedy_head", "penalty_sample_head")
    assert match_roles(llm_convert(top1=False))["convention"] == "llm_convert"  # without them: not share-cache


def test_unknown_layout_names_the_roles_it_lacks_and_its_nets():
    nets = [net("vit", [T("pixels", "f32", [1, 3, 8, 8])], [T("out", "f32", [1, 4, H])]), lm_head(True)]
    with pytest.raises(ModelError) as e:
        match_roles(nets)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("not an LLM bmodel tpuchat knows: closest is llm_convert")
    for role in ("embedding (no net embedding)", "layer prefill (no net block_0)", "layer decode (no net block_cache_0)"):
        assert role in msg
    assert msg.endswith("the bmodel has nets: vit, lm_head")


def test_names_alone_do_not_match_a_decode_net_of_the_wrong_shape():
    nets = [embedding(rows=(1, S)), *layers("qwen_block_%d", "qwen_block_cache_%d", mask_cols=S), lm_head(True)]
    with pytest.raises(ModelError, match=r"closest is Qwen-TPU .*layer decode \(qwen_block_cache_0's mask has 64 columns"):
        match_roles(nets)


def test_positions_must_be_int32():
    nets = llm_convert()
    nets[2].stages[0].inputs[1] = T("position_ids", "f32", [1, S])
    with pytest.raises(ModelError, match=r"layer prefill \(block_0 input 1 is not int32 position ids\)"):
        match_roles(nets)
