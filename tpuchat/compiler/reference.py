"""Reference greedy generation with transformers, for checking bmodel output.

Runs INSIDE the compiler venv, as a plain script:

    venv/bin/python reference.py MODEL_DIR < requests.json > results.json

stdin: a JSON list of requests `{"ids": [prompt token ids], "max_new_tokens": N}`.
stdout: a JSON list with, per request, `{"ids": [N generated ids],
"margins": [top1 - top2 logit per step], "top2": [[id1, id2] per step]}`.

Compute is float32 over the stored (bf16/f16) weights. Exactly N tokens are
generated: end-of-sequence tokens do not stop generation.
"""

from __future__ import annotations

import json
import os
import sys


def run(model_dir: str, requests: list[dict]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    quant = {r.get("quant") for r in requests} - {None}
    if len(quant) > 1:
        raise ValueError("one quantisation per call")
    if quant:
        fake_quantize(model, *quant)
    results = []
    for req in requests:
        ids = [int(i) for i in req["ids"]]
        n = int(req["max_new_tokens"])
        if not ids:
            raise ValueError("empty prompt")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"token id out of range 0..{vocab - 1}: {ids}")
        out_ids: list[int] = []
        margins: list[float] = []
        top2: list[list[int]] = []
        all_logits: list[list[float]] = []
        with torch.no_grad():
            past = None
            inp = torch.tensor([ids], dtype=torch.long)
            for _ in range(n):
                res = model(input_ids=inp, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1].float()
                vals, idx = torch.topk(logits, 2)
                tok = int(idx[0])
                out_ids.append(tok)
                margins.append(float(vals[0] - vals[1]))
                top2.append([int(idx[0]), int(idx[1])])
                if req.get("logits"):
                    all_logits.append([round(float(x), 5) for x in logits])
                inp = torch.tensor([[tok]], dtype=torch.long)
        result = {"ids": out_ids, "margins": margins, "top2": top2}
        if req.get("logits"):
            result["logits"] = all_logits  # full rows: for judging quantised builds
        results.append(result)
    return results


def fake_quantize(model, spec: str) -> None:
    """Round the decoder layers' Linear weights the way model_deploy's W4/W8
    modes do (llm_convert defaults: groups of 64 inputs per output row,
    asymmetric with a zero point), so a quantised bmodel can be compared with
    the model it really computes.  Embeddings, norms and lm_head stay as they
    are."""
    import torch

    bits = {"w4": 4, "w8": 8}[spec.split(":")[0]]
    group = int(spec.split(":")[1]) if ":" in spec else 64
    qmax = (1 << bits) - 1
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or ".layers." not in name:
                continue
            w = mod.weight.data
            out_f, in_f = w.shape
            g = w.reshape(out_f, in_f // group, group)
            lo = g.amin(dim=-1, keepdim=True)
            hi = g.amax(dim=-1, keepdim=True)
            scale = ((hi - lo) / qmax).clamp(min=1e-12)
            zp = torch.round(-lo / scale)
            q = torch.clamp(torch.round(g / scale) + zp, 0, qmax)
            mod.weight.data = ((q - zp) * scale).reshape(out_f, in_f).to(w.dtype)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: reference.py MODEL_DIR < requests.json", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    requests = json.load(sys.stdin)
    results = run(argv[0], requests)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
