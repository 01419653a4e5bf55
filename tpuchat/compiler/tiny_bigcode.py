"""A tiny random GPT-BigCode (WizardCoder's architecture) for the WizardCoder-format fixture.

Runs INSIDE the compiler venv, as a plain script:

    venv/bin/python tiny_bigcode.py --dtype f16 --out DIR

Multi-query attention (one K/V head), learned absolute positions, LayerNorm,
GELU MLP; hidden 128, 2 layers, 4 heads, the same 512-token byte-level BPE as
tinymodels.py, written both as tokenizer.json and as WizardCoder's
vocab.json + merges.txt, with WizardCoder's Alpaca-style prompt as the chat
template.  Deterministic (tinymodels' seed and initialisation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run with -I: find tinymodels.py beside us
import tinymodels as tm  # noqa: E402

POSITIONS = 1024  # learned position table rows (>= the fixture's sequence length)
EOS = "<|endoftext|>"

# WizardCoder's prompt (its demo wraps each question like this).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '<|endoftext|>' }}{% endif %}"
    "{% endfor %}"
)


def build(dtype: str, out: Path, seed: int = tm.SEED) -> dict:
    import torch
    from transformers import (AutoTokenizer, GenerationConfig, GPTBigCodeConfig, GPTBigCodeForCausalLM,
                              PreTrainedTokenizerFast)

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = tm.build_tokenizer()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                 unk_token=None, model_max_length=POSITIONS, clean_up_tokenization_spaces=False)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    tcfg.update(chat_template=CHAT_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast")
    cfg_path.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    if (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").unlink()
    tok.model.save(str(out))  # vocab.json + merges.txt, as WizardCoder ships them
    eos = tok.token_to_id(EOS)
    config = GPTBigCodeConfig(vocab_size=tm.VOCAB_SIZE, n_positions=POSITIONS, n_embd=tm.HIDDEN,
                              n_layer=tm.LAYERS, n_head=tm.HEADS, n_inner=tm.INTERMEDIATE,
                              activation_function="gelu_pytorch_tanh", multi_query=True,
                              layer_norm_epsilon=1e-5, initializer_range=tm.INIT_STD, bos_token_id=eos,
                              eos_token_id=eos, tie_word_embeddings=False, use_cache=True)
    model = GPTBigCodeForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # tinymodels' init; LayerNorm weights 1 ("norm" there, "ln_" here)
        gen = torch.Generator().manual_seed(seed)
        for name, p in sorted(model.named_parameters()):
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * tm.INIT_STD)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    model.eval()
    loaded = AutoTokenizer.from_pretrained(str(out))
    assert len(loaded) == tm.VOCAB_SIZE, len(loaded)
    continuations = []
    for text in ("def fib(n):", "The quick brown fox"):  # random weights must not collapse
        ids = loaded(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            new = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=eos)[0, ids.shape[1]:].tolist()
        if len(set(new)) < 4:
            raise RuntimeError(f"greedy continuation collapsed: {new}")
        continuations.append(new)
    torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.save_pretrained(str(out), safe_serialization=True)
    mcfg = json.loads((out / "config.json").read_text())
    mcfg["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16"}[dtype]
    (out / "config.json").write_text(json.dumps(mcfg, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos).save_pretrained(str(out))
    info = {"arch": "gpt_bigcode", "dtype": dtype, "seed": seed, "vocab_size": tm.VOCAB_SIZE,
            "eos_token_ids": [eos], "greedy_check": continuations}
    (out / "tinymodel.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["bf16", "f16"], default="f16")
    ap.add_argument("--seed", type=int, default=tm.SEED)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(build(args.dtype, args.out, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
