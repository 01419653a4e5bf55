"""LLM-TPU's share-cache layout (models/Qwen1_5/share_cache_demo): export, replay, compile.

Two halves, like seed_export.py + seed_build.py, in one module of its own so
that the share-cache fixture's cache key is separate from the other seed
fixtures' (build.variant_sources):

* as a script INSIDE the compiler venv (torch + transformers + onnxruntime):

      venv/bin/python seed_share.py --model SRC --share 128 --unshare 64 --seq 192 --out DIR

  writes one ONNX file per net, `nets.json` (the model_transform /
  model_deploy steps in `model_tool --combine` order) and `replay.json`, and
  fails unless the calling sequence below, replayed on the ONNX nets with
  onnxruntime, gives transformers' greedy tokens;
* `compile_share` (main interpreter, stdlib only): runs the script and
  compiles the nets with seed_build's command lines.

The layout (three lengths: SHARE, UNSHARE, and the KV length SEQ; the demo's
README splits SEQ = SHARE + UNSHARE + a decode window, its shipped bmodels
have a zero window, e.g. 6144 + 2560 = 8704):

    embedding [1,SHARE], embedding_unshare [1,UNSHARE], embedding_cache [1,1]
    block_N          (hidden [1,SHARE,H], position_ids, mask [1,1,SHARE,SHARE])
                     -> hidden, K, V [1,SHARE,KVH,D]
    block_unshare_N  (hidden [1,UNSHARE,H], position_ids, mask [1,1,UNSHARE,SHARE+UNSHARE],
                      history_k/v [1,SHARE,KVH,D]) -> hidden, K, V [1,UNSHARE,KVH,D]
    block_cache_N    (hidden [1,1,H], position_id, mask [1,1,1,SEQ+1],
                      history_k/v [1,SEQ,KVH,D]) -> hidden, K, V [1,1,KVH,D]   (io_alone)
    lm_head -> f32 logits, greedy_head, penalty_sample_head (input_ids [1,SEQ]): sophon-demo's

Calling sequence for a shared part of s <= SHARE tokens and an unshared part
of u <= UNSHARE tokens: the shared part through block_N (causal mask over s
rows, positions 0..s-1), its K/V at cache rows [0, s); the unshared part
through block_unshare_N with the first SHARE cache rows as history, mask row i
seeing history columns [0, s) and its own columns SHARE + [0, i], positions
s..s+u-1, its K/V at cache rows SHARE + [0, u); the k-th token after that
(position s + u + k) at row SHARE + u + k, its decode mask seeing [0, s),
SHARE + [0, u + k) and the last entry (itself).  The demo's own decode step
leaves one more row visible and writes one row further on (an off-by-one that
sees a zero row); this sequence is transformers' computation exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASK = -10000.0
OUTPUT_NAME = "qwen2-tiny_{quant}_share{share}_unshare{unshare}_1dev{dyn}.bmodel"  # compile.sh's pattern
# The replay: a document (shared part) and two questions after it (unshared parts).
DOCUMENT = list(range(30, 70))
QUESTIONS = (list(range(100, 117)), list(range(200, 209)))
STEPS = 8


# -- export (compiler venv) ---------------------------------------------------------------------

def export_nets(model, share: int, unshare: int, seq: int, out: Path, quantize: str, dynamic: bool) -> list:
    import torch

    import seed_export as se  # beside this script

    sh = se.Shapes(model, seq)
    mods = se._modules(model, sh)
    ids = torch.arange(share, dtype=torch.int32)[None]
    se.export(mods["embedding"](), (ids,), out / "embedding.onnx", ["input_ids"], ["input_embed"])
    steps = [se.step("embedding", "embedding.onnx", "BF16", [[1, share]]),
             se.step("embedding_unshare", "embedding.onnx", "BF16", [[1, unshare]]),
             se.step("embedding_cache", "embedding.onnx", "BF16", [[1, 1]])]
    se.export(mods["lm_logits"](), (torch.randn(1, sh.hidden),), out / "lm_head.onnx",
              ["hidden_states"], ["m_logits"])
    steps.append(se.step("lm_head", "lm_head.onnx", quantize, [[1, sh.hidden]], quant_output=False))
    logits = torch.randn(1, sh.vocab)
    se.export(mods["greedy"](), (logits,), out / "greedy_head.onnx", ["m_logits"], ["token"])
    steps.append(se.step("greedy_head", "greedy_head.onnx", "F32", quant_input=False, quant_output=False))
    scalars = (torch.tensor([0.8]), torch.tensor([0.98]), torch.tensor([0.98]))
    seq_ids = torch.arange(seq, dtype=torch.int32)[None]
    se.export(mods["penalty"](), (logits, seq_ids, *scalars), out / "penalty_sample_head.onnx",
              ["m_logits", "input_ids", "top_p", "temperature", "penalty"], ["probs", "token"])
    steps.append(se.step("penalty_sample_head", "penalty_sample_head.onnx", "F32",
                         quant_input=False, quant_output=False))
    layer_io = ["input_states", "position_ids", "attention_mask"]
    kv_out = ["hidden_states", "past_k", "past_v"]

    def kv(rows):
        return torch.randn(1, rows, sh.kv_heads, sh.head_dim)

    for i in range(sh.layers):
        nets = (  # name, module, args, extra inputs, io_alone (compile.sh: only the decode nets)
            (f"block_{i}", mods["block"](i), (torch.randn(1, share, sh.hidden), ids,
                                              torch.zeros(1, 1, share, share)), [], False),
            (f"block_unshare_{i}", mods["block_cache"](i),
             (torch.randn(1, unshare, sh.hidden), torch.arange(unshare, dtype=torch.int32)[None],
              torch.zeros(1, 1, unshare, share + unshare), kv(share), kv(share)), ["history_k", "history_v"], False),
            (f"block_cache_{i}", mods["block_cache"](i),
             (torch.randn(1, 1, sh.hidden), torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, seq + 1),
              kv(seq), kv(seq)), ["history_k", "history_v"], True),
        )
        for name, mod, args, extra, io_alone in nets:
            se.export(mod, args, out / f"{name}.onnx", layer_io + extra, kv_out)
            # compile.sh --dynamic 1: only block_N (the shared part) is compiled dynamic
            steps.append(dict(se.step(name, f"{name}.onnx", quantize, io_alone=io_alone),
                              dynamic=dynamic and name.startswith("block_") and not extra))
    return steps


# -- replay (compiler venv) ---------------------------------------------------------------------

class Replay:
    """The calling sequence of the module docstring on the ONNX nets (float32, onnxruntime)."""

    def __init__(self, onnx: Path):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        opts = ort.SessionOptions()
        opts.log_severity_level = 3

        def session(name):
            return ort.InferenceSession(str(onnx / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])

        plan = json.loads((onnx / "nets.json").read_text())
        self.share, self.unshare, self.seq = plan["share"], plan["unshare"], plan["seq"]
        self.layers = sum(1 for st in plan["steps"] if st["name"].startswith("block_cache_"))
        self.embed = session("embedding")
        self.blocks = [session(f"block_{i}") for i in range(self.layers)]
        self.unshares = [session(f"block_unshare_{i}") for i in range(self.layers)]
        self.caches = [session(f"block_cache_{i}") for i in range(self.layers)]
        self.lm = session("lm_head")
        k_shape = self.caches[0].get_inputs()[3].shape
        self.k = [np.zeros([1, self.seq, *k_shape[2:]], np.float32) for _ in range(self.layers)]
        self.v = [np.zeros_like(k) for k in self.k]
        self.s = 0  # shared rows in the cache

    def embed_ids(self, ids, rows):
        np = self.np
        width = self.share  # the ONNX embedding's one width: pad, run in chunks, keep `rows`
        buf = np.zeros((1, width * (1 + max(rows, len(ids)) // width)), np.int32)
        buf[0, :len(ids)] = ids
        parts = [self.embed.run(None, {"input_ids": buf[:, c:c + width]})[0] for c in range(0, buf.shape[1], width)]
        return np.concatenate(parts, axis=1)[:, :rows]

    def head(self, h):
        return int(self.np.argmax(self.lm.run(None, {"hidden_states": h.reshape(1, -1)})[0]))

    def shared(self, ids):
        np, S, s = self.np, self.share, len(ids)
        hidden = self.embed_ids(ids, S)
        pos = np.zeros((1, S), np.int32)
        pos[0, :s] = np.arange(s)
        mask = np.full((1, 1, S, S), MASK, np.float32)
        for i in range(s):
            mask[0, 0, i, :i + 1] = 0
        for i, b in enumerate(self.blocks):
            hidden, k, v = b.run(None, {"input_states": hidden, "position_ids": pos, "attention_mask": mask})
            self.k[i][:, :S], self.v[i][:, :S] = k, v  # padding rows too: masked, finite
        self.s = s

    def unshared(self, ids):
        np, S, U, s, u = self.np, self.share, self.unshare, self.s, len(ids)
        hidden = self.embed_ids(ids, U)
        pos = np.zeros((1, U), np.int32)
        pos[0, :u] = np.arange(s, s + u)
        mask = np.full((1, 1, U, S + U), MASK, np.float32)
        for i in range(u):
            mask[0, 0, i, :s] = 0
            mask[0, 0, i, S:S + i + 1] = 0
        for i, b in enumerate(self.unshares):
            hidden, k, v = b.run(None, {"input_states": hidden, "position_ids": pos, "attention_mask": mask,
                                        "history_k": self.k[i][:, :S], "history_v": self.v[i][:, :S]})
            self.k[i][:, S:S + u], self.v[i][:, S:S + u] = k[:, :u], v[:, :u]
        return self.head(hidden[:, u - 1])

    def decode(self, token, k_after):
        """The token at unshared offset k_after (position s + k_after, row SHARE + k_after)."""
        np, S, s = self.np, self.share, self.s
        row = S + k_after
        h = self.embed_ids([token], 1)
        m = np.full((1, 1, 1, self.seq + 1), MASK, np.float32)
        m[..., :s] = 0
        m[..., S:row] = 0
        m[..., self.seq] = 0
        for i, c in enumerate(self.caches):
            h, k, v = c.run(None, {"input_states": h, "position_ids": np.array([[s + k_after]], np.int32),
                                   "attention_mask": m, "history_k": self.k[i], "history_v": self.v[i]})
            self.k[i][:, row], self.v[i][:, row] = k[:, 0], v[:, 0]
        return self.head(h)

    def ask(self, question, steps):
        tokens = [self.unshared(question)]
        for j in range(steps - 1):
            tokens.append(self.decode(tokens[-1], len(question) + j))
        return tokens


def reference(model, prompt: list, steps: int) -> list:
    """transformers' greedy tokens by plain forwards (no generation_config: the tiny model's
    repetition_penalty would change tokens that repeat the document)."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def check(onnx: Path, model) -> dict:
    r = Replay(onnx)
    r.shared(DOCUMENT)
    result = {"document": DOCUMENT, "questions": [], "equal": True}
    for q in QUESTIONS:  # the second question reuses the shared rows as they are
        got, want = r.ask(q, STEPS), reference(model, DOCUMENT + q, STEPS)
        result["questions"].append({"question": q, "replay": got, "reference": want})
        result["equal"] &= got == want
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--share", type=int, required=True)
    ap.add_argument("--unshare", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True, help="KV length: share + unshare + a decode window")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quantize", default="BF16")
    ap.add_argument("--dynamic", action="store_true", help="block_N dynamic (compile.sh --dynamic 1)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.seq < args.share + args.unshare:
        raise SystemExit("seed_share: --seq must hold the shared and the unshared rows")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE))
    import seed_export

    model = seed_export.load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = export_nets(model, args.share, args.unshare, args.seq, out, args.quantize, args.dynamic)
    plan = {"format": "share-cache", "share": args.share, "unshare": args.unshare, "seq": args.seq,
            "dynamic": args.dynamic, "steps": steps}
    (out / "nets.json").write_text(json.dumps(plan, indent=1) + "\n")
    print(f"exported {len(steps)} nets to {out}")
    result = check(out, model)
    (out / "replay.json").write_text(json.dumps(result) + "\n")
    if not result["equal"]:
        print(f"seed_share: the exported nets do not compute the model: {result}", file=sys.stderr)
        return 1
    print(f"replayed the share-cache calling sequence in onnxruntime: {result['questions']}")
    return 0


# -- compile (main interpreter) -----------------------------------------------------------------

def compile_share(v, src: Path, out: Path, tc, run, env: dict, log_path: Path) -> Path:
    """Export and compile variant `v` (route share-cache; v.extra = --share N --unshare M) into
    `out`; returns the combined bmodel (run/env/log as in seed_build.compile_seed)."""
    from . import seed_build

    work = out / "work"
    onnx = work / "onnx"
    onnx.mkdir(parents=True)
    run([str(tc.python), str(Path(__file__).resolve()), "--model", str(src), "--seq", str(v.seq_length),
         "--out", str(onnx), "--quantize", v.quantize.upper(), *v.extra], log_path, env, work, 1800)
    plan = json.loads((onnx / "nets.json").read_text())

    def compile_net(n: int, st: dict) -> str:
        st = dict(st, model_def=str(onnx / st["model_def"]))
        stem = f"{n:02d}_{st['name']}"
        net_dir = work / stem
        net_dir.mkdir()
        net_log = work / f"{stem}.log"
        try:
            run(seed_build.transform_cmd(tc, st, f"{stem}.mlir"), net_log, env, net_dir, 1800)
            deploy = seed_build.deploy_cmd(tc, st, f"{stem}.mlir", f"{stem}.bmodel", v.chip)
            run(deploy + (["--dynamic"] if st.get("dynamic") else []), net_log, env, net_dir, 1800)
        finally:
            with open(log_path, "a") as fh:
                fh.write(net_log.read_text(errors="replace"))
        return str(net_dir / f"{stem}.bmodel")

    with ThreadPoolExecutor(max_workers=seed_build.jobs()) as pool:
        parts = list(pool.map(lambda a: compile_net(*a), enumerate(plan["steps"])))
    name = OUTPUT_NAME.format(quant=v.quantize, share=plan["share"], unshare=plan["unshare"],
                              dyn="_dyn" if plan["dynamic"] else "")
    run([str(tc.model_tool), "--combine", *parts, "-o", str(out / name)], log_path, env, work, 600)
    with open(out / "model_info.txt", "w") as fh:
        proc = subprocess.run([str(tc.model_tool), "--info", str(out / name)], stdout=fh,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"model_tool --info failed ({proc.returncode}) on {out / name}")
    (out / "nets.json").write_text(json.dumps(plan, indent=1) + "\n")
    shutil.copy2(onnx / "replay.json", out / "replay.json")
    shutil.rmtree(work)
    return out / name


if __name__ == "__main__":
    sys.exit(main())
