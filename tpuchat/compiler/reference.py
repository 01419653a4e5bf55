"""Reference greedy generation with transformers, for checking bmodel output.

Runs INSIDE the compiler venv, as a plain script:

    venv/bin/python reference.py MODEL_DIR < requests.json > results.json

stdin: a JSON list of requests `{"ids": [prompt token ids], "max_new_tokens": N}`.
stdout: a JSON list with, per request, `{"ids": [N generated ids],
"margins": [top1 - top2 logit per step], "top2": [[id1, id2] per step]}`.

Compute is float32 over the stored (bf16/f16) weights. Exactly N tokens are
generated: end-of-sequence tokens do not stop generation.

Llama-3.2-Vision (mllama) models take the same requests, optionally with an
image: `{"ids", "max_new_tokens", "image": {"pixel_values": base64 float32
[tiles, 3, size, size], "tiles", "size", "aspect_ratio_id",
"aspect_ratio_mask": [...]}, "image_pos": index of the image token in ids}`.
Rows from image_pos on attend to the image's used tiles (transformers'
cross_attention_mask convention); without an image the cross-attention
layers are skipped, as transformers does.  Each result then also has
`vit`: base64 float32 of the projected vision states [tiles, patches,
hidden] (what the bmodel's `vit` net outputs).
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


def _converter_intermediate_layers(model) -> None:
    """Make transformers pick the vision encoder's intermediate layers as the
    converter (and transformers 4.x) do: index k = the state after k encoder
    layers.  transformers 5.x's list of layer states has no input entry, so
    the same index picks one layer later (cos 0.992 instead of 0.99998)."""
    import transformers

    vm = model.model.vision_model
    if int(transformers.__version__.split(".")[0]) >= 5:
        vm.intermediate_layers_indices = [k - 1 for k in model.config.vision_config.intermediate_layers_indices]


def run_mllama(model_dir: str, requests: list[dict]) -> list[dict]:
    import base64

    import numpy as np
    import torch
    from transformers import MllamaForConditionalGeneration

    torch.manual_seed(0)
    model = MllamaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    _converter_intermediate_layers(model)
    vocab = model.config.text_config.vocab_size
    results = []
    for req in requests:
        ids = [int(i) for i in req["ids"]]
        n_new = int(req["max_new_tokens"])
        if not ids:
            raise ValueError("empty prompt")
        image = req.get("image")
        extra = {}
        xmask = None
        result: dict = {}
        if image:
            tiles, size = int(image["tiles"]), int(image["size"])
            pv = np.frombuffer(base64.b64decode(image["pixel_values"]), dtype=np.float32)
            pv = torch.from_numpy(pv.copy()).reshape(1, 1, tiles, 3, size, size)
            ar_ids = torch.tensor([[int(image["aspect_ratio_id"])]])
            ar_mask = torch.tensor([[list(image["aspect_ratio_mask"])]])
            pos = int(req["image_pos"])
            if not 0 <= pos < len(ids):
                raise ValueError(f"image_pos {pos} outside the prompt")
            xmask = torch.zeros(1, len(ids) + n_new, 1, tiles, dtype=torch.long)
            xmask[0, pos:, 0, :] = ar_mask[0, 0]
            extra = {"pixel_values": pv, "aspect_ratio_ids": ar_ids, "aspect_ratio_mask": ar_mask}
            with torch.no_grad():
                vis = model.model.vision_model(pixel_values=pv, aspect_ratio_ids=ar_ids,
                                               aspect_ratio_mask=ar_mask).last_hidden_state
                vis = model.model.multi_modal_projector(vis).reshape(tiles, -1, model.config.text_config.hidden_size)
            result["vit"] = base64.b64encode(vis.float().numpy().astype(np.float32).tobytes()).decode()
            result["vit_shape"] = list(vis.shape)
        out_ids, margins, top2 = [], [], []
        with torch.no_grad():
            past = None
            inp = torch.tensor([ids], dtype=torch.long)
            length = len(ids)
            for _ in range(n_new):
                kw = dict(extra) if past is None else {}
                if xmask is not None:
                    kw["cross_attention_mask"] = xmask[:, :length]
                res = model(input_ids=inp, past_key_values=past, use_cache=True, **kw)
                past = res.past_key_values
                logits = res.logits[0, -1, :vocab].float()
                vals, idx = torch.topk(logits, 2)
                tok = int(idx[0])
                out_ids.append(tok)
                margins.append(float(vals[0] - vals[1]))
                top2.append([int(idx[0]), int(idx[1])])
                inp = torch.tensor([[tok]], dtype=torch.long)
                length += 1
        result.update({"ids": out_ids, "margins": margins, "top2": top2})
        results.append(result)
    return results


def _model_type(model_dir: str) -> str:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f).get("model_type", "")


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
    if _model_type(argv[0]) == "mllama":
        results = run_mllama(argv[0], requests)
    else:
        results = run(argv[0], requests)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
