"""Tiny random-weight Hugging Face models for compiling test bmodels.

Runs INSIDE the compiler venv (Python 3.10 with torch, transformers and
tokenizers), as a plain script:

    venv/bin/python tinymodels.py --arch qwen2 --dtype bf16 --out DIR

Everything is deterministic (fixed seeds, built-in corpus). The output dir is
a normal `save_pretrained` model directory with a ChatML byte-level BPE
tokenizer (`tokenizer.json`, `tokenizer_config.json` with a Qwen2-style
`chat_template`), `config.json`, `generation_config.json` and
`model.safetensors`.

Weights are drawn in float32, rounded to bf16 and stored in the requested
dtype; the f16 copy holds the same (bf16-rounded) values, so every variant
computes nearly the same function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SEED = 1234
HIDDEN = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 256
MAX_POSITIONS = 2048
VOCAB_SIZE = 512  # total, special tokens included
ROPE_THETA = {"qwen2": 1000000.0, "llama": 500000.0}
INIT_STD = 0.1  # transformers' 0.02 gives near-uniform logits (ties everywhere)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2-Instruct's chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer split pattern.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    # English
    "Hello! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question briefly and clearly.",
    "What is the capital of France? The capital of France is Paris.",
    "Tell me a story about a robot who learns to paint the sea at night.",
    "A tensor processing unit runs large language models on the edge.",
    "The weather is nice, so let us go for a walk in the park this afternoon.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 -7 1e-5",
    "Please summarise the following text in three sentences, then list the key points.",
    "It's, they're, we've, I'm, you'll, he'd - contractions are common in English.",
    # Chinese
    "你好，很高兴认识你。今天天气怎么样？",
    "我是一个人工智能助手，我可以回答你的问题。",
    "北京是中国的首都，上海是最大的城市。",
    "请用中文写一首关于春天的短诗。春风吹绿了江南岸。",
    "算能的芯片可以运行大语言模型，速度很快。",
    # Code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; i++) {\n    sum += a[i] * b[i];\n}\n",
    "import numpy as np\nx = np.zeros((4, 8), dtype=np.float32)\nprint(x.shape)\n",
    "#include <stdio.h>\nint main(void) { printf(\"hello, world\\n\"); return 0; }\n",
    "const add = (a, b) => a + b;\nconsole.log(add(2, 3));\n",
    "SELECT name, count(*) FROM users WHERE age > 18 GROUP BY name ORDER BY 2 DESC;",
    "<html><body><h1>Title</h1><p>Some text &amp; more.</p></body></html>",
    # Emoji and other scripts
    "I love pizza 🍕 and coffee ☕! 😀😃😄 🚀✨ 👍🏽",
    "Привет, мир! Καλημέρα κόσμε. こんにちは世界。안녕하세요.",
    "Tabs\tand\nnewlines\r\n and    spaces.",
    # Chat-formatted text so the markers and roles get merges
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n",
]


def build_tokenizer():
    """A byte-level BPE with Qwen2's pre-tokenization; specials get the last ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    n_regular = VOCAB_SIZE - len(SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    corpus = CORPUS * 3
    tok.train_from_iterator(corpus, trainer=trainer)
    if tok.get_vocab_size() != n_regular:
        raise RuntimeError(f"BPE training gave {tok.get_vocab_size()} tokens, wanted {n_regular}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {VOCAB_SIZE}")
    return tok


def save_tokenizer(out: Path):
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(out))
    # Keep the classic (Qwen2) layout: chat_template inside tokenizer_config.json.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["errors"] = "replace"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def make_config(arch: str, special: dict):
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=special["<|im_end|>"],
        use_cache=True,
    )
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(rope_theta=ROPE_THETA[arch], use_sliding_window=False, **common)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(rope_theta=ROPE_THETA[arch], head_dim=HIDDEN // HEADS, attention_bias=False,
                           mlp_bias=False, **common)
    raise SystemExit(f"unknown arch {arch!r}")


def _init_weights(model, seed: int):
    """Deterministic N(0, INIT_STD) weights (norms 1, biases small), rounded to bf16."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def check_generation(model, tok, min_distinct: int = 4) -> list[list[int]]:
    import torch

    prompts = [
        tok.apply_chat_template([{"role": "user", "content": "Hello! Who are you?"}],
                                add_generation_prompt=True, tokenize=False),
        "The quick brown fox",
        "你好，",
    ]
    outs = []
    for text in prompts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id, attention_mask=torch.ones_like(ids))
        new = gen[0, ids.shape[1]:].tolist()
        outs.append(new)
        if len(set(new)) < min_distinct:
            raise RuntimeError(f"greedy continuation collapsed ({len(set(new))} distinct): {new}")
    return outs


def build(arch: str, dtype: str, out: Path, seed: int = SEED) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    special = save_tokenizer(out)
    config = make_config(arch, special)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, seed)
    model.eval()

    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == VOCAB_SIZE, len(tok)
    continuations = check_generation(model, tok)

    torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.save_pretrained(str(out), safe_serialization=True)
    # transformers 5 writes `dtype` and `rope_parameters`; real Qwen2/Llama checkpoints (and
    # older readers) have `torch_dtype` and a top-level `rope_theta`: write both spellings.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16"}[dtype]
    cfg["rope_theta"] = ROPE_THETA[arch]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    eos = [special["<|im_end|>"], special["<|endoftext|>"]]
    gen_cfg = GenerationConfig(
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=eos,
        pad_token_id=special["<|endoftext|>"],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )
    gen_cfg.save_pretrained(str(out))
    info = {
        "arch": arch,
        "dtype": dtype,
        "seed": seed,
        "vocab_size": VOCAB_SIZE,
        "special_tokens": special,
        "eos_token_ids": eos,
        "greedy_check": continuations,
    }
    (out / "tinymodel.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["qwen2", "llama"], required=True)
    ap.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = build(args.arch, args.dtype, args.out, args.seed)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
