"""Per-net ONNX export of a tiny Qwen2 in the layouts of Sophgo's older LLM pipelines.

Runs INSIDE the compiler venv (torch + transformers), as a plain script:

    venv/bin/python seed_export.py --format FORMAT --model SRC --seq 256 --out DIR [--basic]

It writes one ONNX file per net and `nets.json`: the `model_transform.py` /
`model_deploy.py` steps that compile them, in the order `model_tool --combine`
must join them (seed_build.py runs them).  The nets compute transformers'
Qwen2 exactly (float32 export; the bmodel rounds to bf16); what changes between
formats is only the calling convention a runtime has to follow:

sophon-demo  (sophgo/sophon-demo sample/Qwen1_5, later sample/Qwen)
    embedding [1,SEQ] / embedding_cache [1,1]; block_N (hidden, position_ids,
    mask [1,1,SEQ,SEQ]) -> hidden, k, v [1,SEQ,KVH,D]; block_cache_N (+ history
    k/v [1,SEQ,KVH,D], mask [1,1,1,SEQ+1]) -> hidden, new k, v [1,1,KVH,D],
    io_alone unless --basic; lm_head [1,H] -> f32 logits [1,V]; greedy_head
    logits -> top-1; penalty_sample_head (logits, input_ids [1,SEQ], top_p,
    temperature, penalty) -> 50 probs + 50 ids, top_k 50 fixed inside.
qwen-tpu  (sophgo/Qwen-TPU compile/, Qwen-7B v1)
    one `embedding` net with two static stages, [1,1] first then [1,SEQ];
    qwen_block_N / qwen_block_cache_N (io_alone) as above; lm_head [1,H] ->
    top-1 int32.  A tiny Qwen2 stands in for Qwen-7B v1: same block structure
    (RMSNorm, q/k/v with bias, RoPE, SwiGLU, no o_proj bias), with GQA KV heads
    and none of v1's logn query scaling, so transformers' Qwen2 is the reference.
wizardcoder  (sophgo/LLM-TPU models/WizardCoder/compile, GPT-BigCode; source: tiny_bigcode.py)
    `embedding` (input_ids, input_pos: learned positions) with stages [1,1]
    then [1,SEQ]; block_N (hidden, mask) -> hidden, past_layer [1,SEQ,2*D];
    block_cache_N (hidden, past_cache [1,SEQ,2*D], mask [1,1,1,SEQ+1]) ->
    hidden, current_cache [1,SEQ+1,2*D] (K and V of the one multi-query head
    side by side; the caller keeps the cache right-aligned and slides it up a
    row per step); lm_head [1,H] -> top-1; F16, all IO f32, basic addressing.

Integer inputs are exported as int32 (what the runtimes write); masks are
additive (0 visible, large negative hidden) and supplied by the caller.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TOP_K = 50  # sophon-demo's penalty_sample_head keeps the 50 best logits
MIN_KEEP = 5  # ... and never drops the first 5 of them in top-p
OPSET = 15


def load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.requires_grad_(False)  # the nets capture the weights as constants
    return model


class Shapes:
    def __init__(self, model, seq: int):
        c = model.config
        self.seq = seq
        self.hidden = c.hidden_size
        self.heads = c.num_attention_heads
        self.kv_heads = c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.vocab = c.vocab_size
        self.layers = c.num_hidden_layers


def rope_tables(model, seq: int):
    """cos/sin [seq, head_dim] for absolute positions 0..seq-1, from the model's own rotary module
    (so rope_theta and any scaling are whatever transformers uses)."""
    import torch

    pos = torch.arange(seq, dtype=torch.long)[None]
    probe = torch.zeros(1, seq, 1, dtype=torch.float32)
    cos, sin = model.model.rotary_emb(probe, pos)
    return cos[0].float().contiguous(), sin[0].float().contiguous()


def _modules(model, sh: Shapes):
    """The torch modules of every net, built over the model's own layers."""
    import torch

    cos_table, sin_table = rope_tables(model, sh.seq)
    groups = sh.heads // sh.kv_heads
    scale = sh.head_dim ** -0.5

    def rotate(x, cos, sin):  # x [1, S, heads, D]; cos/sin [1, S, 1, D]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    class Layer(torch.nn.Module):
        """One decoder layer; K/V in the seeds' [1, rows, KVH, D] layout."""

        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def qkv(self, hidden, position_ids):
            attn = self.layer.self_attn
            x = self.layer.input_layernorm(hidden)
            s = x.shape[1]
            q = attn.q_proj(x).view(1, s, sh.heads, sh.head_dim)
            k = attn.k_proj(x).view(1, s, sh.kv_heads, sh.head_dim)
            v = attn.v_proj(x).view(1, s, sh.kv_heads, sh.head_dim)
            pos = position_ids.long()
            cos = cos_table[pos].unsqueeze(2)
            sin = sin_table[pos].unsqueeze(2)
            return rotate(q, cos, sin), rotate(k, cos, sin), v

        def finish(self, hidden, q, keys, values, mask):
            s = q.shape[1]
            qh = q.transpose(1, 2)  # [1, heads, S, D]
            kh = keys.transpose(1, 2).repeat_interleave(groups, dim=1)
            vh = values.transpose(1, 2).repeat_interleave(groups, dim=1)
            scores = torch.matmul(qh, kh.transpose(2, 3)) * scale + mask
            probs = torch.softmax(scores.float(), dim=-1)
            out = torch.matmul(probs, vh).transpose(1, 2).reshape(1, s, sh.heads * sh.head_dim)
            hidden = hidden + self.layer.self_attn.o_proj(out)
            return hidden + self.layer.mlp(self.layer.post_attention_layernorm(hidden))

    class Block(Layer):
        def forward(self, hidden, position_ids, attention_mask):
            q, k, v = self.qkv(hidden, position_ids)
            return self.finish(hidden, q, k, v, attention_mask), k, v

    class BlockCache(Layer):
        def forward(self, hidden, position_ids, attention_mask, history_k, history_v):
            q, k, v = self.qkv(hidden, position_ids)
            keys = torch.cat([history_k, k], dim=1)
            values = torch.cat([history_v, v], dim=1)
            return self.finish(hidden, q, keys, values, attention_mask), k, v

    class Embedding(torch.nn.Module):
        def forward(self, input_ids):
            return model.model.embed_tokens(input_ids.long()).float()

    class LmHeadLogits(torch.nn.Module):
        def forward(self, hidden):
            return model.lm_head(model.model.norm(hidden)).float()

    class LmHeadTop1(torch.nn.Module):
        def forward(self, hidden):
            logits = model.lm_head(model.model.norm(hidden)).float()
            return torch.topk(logits, 1)[1].int()

    class GreedyHead(torch.nn.Module):
        def forward(self, m_logits):
            return torch.topk(m_logits, 1)[1].int()

    class PenaltySampleHead(torch.nn.Module):
        """Repetition penalty over input_ids, top-50, temperature, top-p (keeping at least
        MIN_KEEP); returns the 50 probabilities and their token ids; the host draws one."""

        def __init__(self):
            super().__init__()
            # 1.0 where top-p may not drop the token; float, since model_transform takes no
            # boolean constants
            keep = torch.zeros(1, TOP_K)
            keep[0, :MIN_KEEP] = 1.0
            self.register_buffer("keep", keep)

        def forward(self, m_logits, input_ids, top_p, temperature, penalty):
            ids = input_ids.long()
            seen = torch.gather(m_logits, 1, ids)
            seen = torch.where(seen < 0, seen * penalty, seen / penalty)
            logits = m_logits.scatter(1, ids, seen)
            top, token = torch.topk(logits, TOP_K)
            top = top / temperature
            cumulative = top.softmax(dim=1).cumsum(dim=1)
            keep = torch.maximum((cumulative < top_p).float(), self.keep)
            filtered = torch.where(keep > 0.5, top, torch.full_like(top, -1000.0))
            return filtered.softmax(dim=1), token.int()

    layers = model.model.layers
    return {
        "block": lambda i: Block(layers[i]), "block_cache": lambda i: BlockCache(layers[i]),
        "embedding": Embedding, "lm_logits": LmHeadLogits, "lm_top1": LmHeadTop1,
        "greedy": GreedyHead, "penalty": PenaltySampleHead,
    }


def export(module, args, path: Path, inputs, outputs) -> None:
    import torch

    kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                      do_constant_folding=True, opset_version=OPSET, **kw)


def _block_inputs(sh: Shapes, decode: bool):
    import torch

    s = 1 if decode else sh.seq
    args = [torch.randn(1, s, sh.hidden), torch.arange(s, dtype=torch.int32)[None],
            torch.zeros(1, 1, s, sh.seq + 1 if decode else sh.seq)]
    names = ["input_states", "position_ids", "attention_mask"]
    if decode:
        args += [torch.randn(1, sh.seq, sh.kv_heads, sh.head_dim) for _ in range(2)]
        names += ["history_k", "history_v"]
    return tuple(args), names


def step(name: str, model_def: str, quantize: str, input_shapes=None, quant_input=True,
         quant_output=True, io_alone=False) -> dict:
    """One model_transform + model_deploy job; seed_build.py turns it into command lines."""
    return {"name": name, "model_def": model_def, "quantize": quantize, "input_shapes": input_shapes,
            "quant_input": quant_input, "quant_output": quant_output, "io_alone": io_alone}


def export_layers(mods, sh: Shapes, out: Path, prefix: str, quantize: str, io_alone: bool) -> list:
    steps = []
    for i in range(sh.layers):
        for decode in (False, True):
            net = f"{prefix}block_cache_{i}" if decode else f"{prefix}block_{i}"
            args, names = _block_inputs(sh, decode)
            mod = mods["block_cache" if decode else "block"](i)
            export(mod, args, out / f"{net}.onnx", names, ["hidden_states", "past_k", "past_v"])
            steps.append(step(net, f"{net}.onnx", quantize, io_alone=io_alone and decode))
    return steps


def export_sophon_demo(model, sh: Shapes, out: Path, quantize: str, io_alone: bool) -> list:
    import torch

    mods = _modules(model, sh)
    ids = torch.arange(sh.seq, dtype=torch.int32)[None]
    export(mods["embedding"](), (ids,), out / "embedding.onnx", ["input_ids"], ["input_embed"])
    steps = [step("embedding", "embedding.onnx", "BF16", [[1, sh.seq]]),
             step("embedding_cache", "embedding.onnx", "BF16", [[1, 1]])]
    export(mods["lm_logits"](), (torch.randn(1, sh.hidden),), out / "lm_head.onnx",
           ["hidden_states"], ["m_logits"])
    # f32 logits out (no --quant_output), as the sample/Qwen script compiles it
    steps.append(step("lm_head", "lm_head.onnx", quantize, [[1, sh.hidden]], quant_output=False))
    logits = torch.randn(1, sh.vocab)
    export(mods["greedy"](), (logits,), out / "greedy_head.onnx", ["m_logits"], ["token"])
    steps.append(step("greedy_head", "greedy_head.onnx", "F32", quant_input=False, quant_output=False))
    scalars = (torch.tensor([0.8]), torch.tensor([0.98]), torch.tensor([0.98]))
    export(mods["penalty"](), (logits, ids, *scalars), out / "penalty_sample_head.onnx",
           ["m_logits", "input_ids", "top_p", "temperature", "penalty"], ["probs", "token"])
    steps.append(step("penalty_sample_head", "penalty_sample_head.onnx", "F32",
                      quant_input=False, quant_output=False))
    return steps + export_layers(mods, sh, out, "", quantize, io_alone)


def export_qwen_tpu(model, sh: Shapes, out: Path, quantize: str, io_alone: bool) -> list:
    import torch

    mods = _modules(model, sh)
    ids = torch.arange(sh.seq, dtype=torch.int32)[None]
    export(mods["embedding"](), (ids,), out / "embedding.onnx", ["input_ids"], ["input_embed"])
    # Two compilations of one net name: model_tool --combine makes them the stages of one
    # `embedding` net, in this order (stage 0 = [1,1], stage 1 = [1,SEQ]).
    steps = [step("embedding", "embedding.onnx", "BF16", [[1, 1]]),
             step("embedding", "embedding.onnx", "BF16", [[1, sh.seq]])]
    export(mods["lm_top1"](), (torch.randn(1, sh.hidden),), out / "lm_head.onnx",
           ["hidden_states"], ["token"])
    steps.append(step("lm_head", "lm_head.onnx", quantize, [[1, sh.hidden]]))
    return steps + export_layers(mods, sh, out, "qwen_", quantize, io_alone)


def _bigcode_modules(model, seq: int):
    """WizardCoder's nets over a GPTBigCodeForCausalLM: multi-query attention, the one K/V head's
    K and V side by side in one cache row [2*head_dim]."""
    import torch

    tr = model.transformer
    c = model.config
    embed_dim, heads = c.n_embd, c.n_head
    head_dim = embed_dim // heads
    scale = head_dim ** -0.5

    class Layer(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward_rows(self, hidden, history, mask):
            s = hidden.shape[1]
            qkv = self.layer.attn.c_attn(self.layer.ln_1(hidden))
            q = qkv[..., :embed_dim].reshape(1, s, heads, head_dim).transpose(1, 2)
            new = qkv[..., embed_dim:]  # [1, s, 2*head_dim]: K then V
            rows = new if history is None else torch.cat([history, new], dim=1)
            k = rows[..., :head_dim].unsqueeze(1)  # [1, 1, rows, D], shared by every head
            v = rows[..., head_dim:].unsqueeze(1)
            probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * scale + mask, dim=-1)
            out = torch.matmul(probs, v).transpose(1, 2).reshape(1, s, embed_dim)
            hidden = hidden + self.layer.attn.c_proj(out)
            return hidden + self.layer.mlp(self.layer.ln_2(hidden)), rows

    class Block(Layer):
        def forward(self, hidden, attention_mask):
            return self.forward_rows(hidden, None, attention_mask)

    class BlockCache(Layer):
        def forward(self, hidden, past_cache, attention_mask):
            return self.forward_rows(hidden, past_cache, attention_mask)

    class Embedding(torch.nn.Module):
        def forward(self, input_ids, input_pos):
            return tr.wte(input_ids.long()) + tr.wpe(input_pos.long())

    class LmHead(torch.nn.Module):
        def forward(self, hidden):
            return torch.topk(model.lm_head(tr.ln_f(hidden)).float(), 1)[1].int()

    return Block, BlockCache, Embedding, LmHead, head_dim


def export_wizardcoder(model, sh, out: Path, quantize: str, io_alone: bool) -> list:
    """LLM-TPU models/WizardCoder/compile: everything F16 with f32 IO (no --quant_input/output),
    basic addressing, embedding stages [1,1] then [1,SEQ]."""
    import torch

    Block, BlockCache, Embedding, LmHead, head_dim = _bigcode_modules(model, sh.seq)
    seq, hidden = sh.seq, model.config.n_embd
    ids = torch.arange(seq, dtype=torch.int32)[None]
    export(Embedding(), (ids, ids), out / "embedding.onnx", ["input_ids", "input_pos"], ["hidden_state"])
    f16 = dict(quant_input=False, quant_output=False)
    steps = [step("embedding", "embedding.onnx", quantize, [[1, 1], [1, 1]], **f16),
             step("embedding", "embedding.onnx", quantize, [[1, seq], [1, seq]], **f16)]
    export(LmHead(), (torch.randn(1, hidden),), out / "lm_head.onnx", ["hidden_states"], ["token"])
    steps.append(step("lm_head", "lm_head.onnx", quantize, **f16))
    layers = model.transformer.h
    for i in range(model.config.n_layer):
        mask = torch.zeros(1, 1, seq, seq)
        export(Block(layers[i]), (torch.randn(1, seq, hidden), mask), out / f"block_{i}.onnx",
               ["input_states", "attention_mask"], ["hidden_states", "past_layer"])
        steps.append(step(f"block_{i}", f"block_{i}.onnx", quantize, **f16))
        args = (torch.randn(1, 1, hidden), torch.randn(1, seq, 2 * head_dim), torch.zeros(1, 1, 1, seq + 1))
        export(BlockCache(layers[i]), args, out / f"block_cache_{i}.onnx",
               ["input_states", "past_cache", "attention_mask"], ["hidden_states", "current_cache"])
        steps.append(step(f"block_cache_{i}", f"block_cache_{i}.onnx", quantize, io_alone=io_alone, **f16))
    return steps


FORMATS = {"sophon-demo": export_sophon_demo, "qwen-tpu": export_qwen_tpu, "wizardcoder": export_wizardcoder}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", required=True, choices=sorted(FORMATS))
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quantize", default="BF16", help="model_deploy --quantize for the layers and lm_head")
    ap.add_argument("--basic", action="store_true", help="decode layers in basic address mode (not io_alone; "
                    "wizardcoder is always basic)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = load(args.model)
    want = "gpt_bigcode" if args.format == "wizardcoder" else "qwen2"
    if model.config.model_type != want:
        raise SystemExit(f"seed_export: the {args.format} layout needs a {want} model, got {model.config.model_type}")
    sh = Shapes(model, args.seq) if want == "qwen2" else argparse.Namespace(seq=args.seq)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = FORMATS[args.format](model, sh, out, args.quantize, not args.basic and want == "qwen2")
    (out / "nets.json").write_text(json.dumps({"format": args.format, "steps": steps}, indent=1) + "\n")
    print(f"exported {len(steps)} nets to {out}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import seed_replay  # beside this script

    result = seed_replay.check(out, model)
    (out / "replay.json").write_text(json.dumps(result) + "\n")
    if not result["equal"]:
        print(f"seed_export: the exported nets do not compute the model: {result}", file=sys.stderr)
        return 1
    print(f"replayed the {args.format} calling sequence in onnxruntime: {result['replay']} == transformers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
