"""Replay a seed format's calling sequence on its exported ONNX nets (onnxruntime,
float32) and compare the greedy tokens with transformers' on the same model.

seed_export.py runs `check` right after exporting (a fixture whose own nets
do not compute the model is never compiled); by hand, inside the compiler venv
with the ONNX overlay on PYTHONPATH:

    venv/bin/python seed_replay.py --onnx DIR --model SRC
The sequence is the demos' one (sophon-demo sample/Qwen, Qwen-TPU demo.cpp):
prefill of the whole padded [1,SEQ] window with a causal mask (padding rows
fully masked), K/V rows kept from row 0, each decode step at position L with a
mask of SEQ+1 entries (0 for rows < L and for the last entry, MASK elsewhere),
its new K/V written at row L.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MASK = -10000.0
MASK_BIGCODE = -1000.0  # WizardCoder's masks
PROMPT = list(range(20, 45))
STEPS = 8


def replay(onnx: Path, prompt: list[int], steps: int) -> list[int]:
    import numpy as np
    import onnxruntime as ort

    plan = json.loads((onnx / "nets.json").read_text())
    prefix = "qwen_" if plan["format"] == "qwen-tpu" else ""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def session(name):
        return ort.InferenceSession(str(onnx / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])

    embed = session("embedding")
    seq = embed.get_inputs()[0].shape[1]
    layers = sum(1 for st in plan["steps"] if st["name"].startswith(f"{prefix}block_cache_"))
    blocks = [session(f"{prefix}block_{i}") for i in range(layers)]
    caches = [session(f"{prefix}block_cache_{i}") for i in range(layers)]
    lm = session("lm_head")
    top1 = plan["format"] == "qwen-tpu"  # its lm_head returns the token itself

    def embed_ids(ids):  # the [1,SEQ] net; a decode token reads row 0
        buf = np.zeros((1, seq), np.int32)
        buf[0, :len(ids)] = ids
        return embed.run(None, {"input_ids": buf})[0][:, :len(ids)]

    def head(h):
        out = lm.run(None, {"hidden_states": h.reshape(1, -1).astype(np.float32)})[0]
        return int(out.reshape(-1)[0]) if top1 else int(np.argmax(out.reshape(-1)))

    n = len(prompt)
    hidden = np.zeros((1, seq, embed.get_outputs()[0].shape[2]), np.float32)
    hidden[:, :n] = embed_ids(prompt)
    pos = np.zeros((1, seq), np.int32)
    pos[0, :n] = np.arange(n)
    mask = np.full((1, 1, seq, seq), MASK, np.float32)
    for i in range(n):
        mask[0, 0, i, :i + 1] = 0
    kv = []
    for b in blocks:
        hidden, k, v = b.run(None, {"input_states": hidden, "position_ids": pos, "attention_mask": mask})
        kv.append([k, v])
    tokens = [head(hidden[:, n - 1])]
    for _ in range(steps - 1):
        h = embed_ids([tokens[-1]])
        m = np.full((1, 1, 1, seq + 1), MASK, np.float32)
        m[..., :n] = 0
        m[..., seq] = 0
        for c, layer_kv in zip(caches, kv):
            h, k, v = c.run(None, {"input_states": h, "position_ids": np.array([[n]], np.int32),
                                   "attention_mask": m, "history_k": layer_kv[0], "history_v": layer_kv[1]})
            layer_kv[0][:, n] = k[:, 0]
            layer_kv[1][:, n] = v[:, 0]
        n += 1
        tokens.append(head(h))
    return tokens


def replay_wizardcoder(onnx: Path, prompt: list[int], steps: int) -> list[int]:
    """WizardCoder's sequence: prefill at the front of the window with a causal mask over all SEQ
    rows; the prompt's cache rows then move to the END of the cache (right-aligned); each decode
    step gets a mask of SEQ+1 entries hiding the first SEQ-L (L tokens so far), returns SEQ+1 rows
    and the cache becomes the last SEQ of them."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def session(name):
        return ort.InferenceSession(str(onnx / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])

    embed = session("embedding")
    seq = embed.get_inputs()[0].shape[1]
    plan = json.loads((onnx / "nets.json").read_text())
    layers = sum(1 for st in plan["steps"] if st["name"].startswith("block_cache_"))
    blocks = [session(f"block_{i}") for i in range(layers)]
    caches = [session(f"block_cache_{i}") for i in range(layers)]
    lm = session("lm_head")

    def embed_at(ids, start):
        buf, pos = np.zeros((1, seq), np.int32), np.zeros((1, seq), np.int32)
        buf[0, :len(ids)] = ids
        pos[0, :len(ids)] = np.arange(start, start + len(ids))
        return embed.run(None, {"input_ids": buf, "input_pos": pos})[0][:, :len(ids)]

    def head(h):
        return int(lm.run(None, {"hidden_states": h.reshape(1, -1).astype(np.float32)})[0].reshape(-1)[0])

    n = len(prompt)
    hidden = np.zeros((1, seq, embed.get_outputs()[0].shape[2]), np.float32)
    hidden[:, :n] = embed_at(prompt, 0)
    mask = np.triu(np.full((1, 1, seq, seq), MASK_BIGCODE, np.float32), k=1)
    kv = []
    for b in blocks:
        hidden, rows = b.run(None, {"input_states": hidden, "attention_mask": mask})
        cache = np.zeros_like(rows)
        cache[:, seq - n:] = rows[:, :n]
        kv.append(cache)
    tokens = [head(hidden[:, n - 1])]
    for _ in range(steps - 1):
        h = embed_at([tokens[-1]], n)
        m = np.zeros((1, 1, 1, seq + 1), np.float32)
        m[..., :seq - n] = MASK_BIGCODE
        for i, c in enumerate(caches):
            h, rows = c.run(None, {"input_states": h, "past_cache": kv[i], "attention_mask": m})
            kv[i] = rows[:, 1:]
        n += 1
        tokens.append(head(h))
    return tokens


def reference(model, prompt: list[int], steps: int) -> list[int]:
    """transformers' greedy tokens (float32 model)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return [int(t) for t in out[0, len(prompt):]]


def check(onnx: Path, model) -> dict:
    """{"replay": tokens, "reference": tokens, "equal": bool}"""
    fmt = json.loads((onnx / "nets.json").read_text())["format"]
    got = (replay_wizardcoder if fmt == "wizardcoder" else replay)(onnx, PROMPT, STEPS)
    want = reference(model, PROMPT, STEPS)
    return {"prompt": PROMPT, "replay": got, "reference": want, "equal": got == want}


def main(argv=None) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    result = check(Path(args.onnx), model)
    print(json.dumps(result))
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
