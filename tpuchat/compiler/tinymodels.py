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


def save_weights(model, out: Path, dtype: str, rope_theta: float, rope_section: str = "") -> None:
    """Save `model` in `dtype` with a config.json real checkpoints' readers know: transformers 5
    writes `dtype` and `rope_parameters`; real Qwen2/Llama checkpoints (and older readers, the
    converter among them) have `torch_dtype` and a `rope_theta` (in `rope_section` when given),
    so both spellings are written."""
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16"}[dtype]
    (cfg[rope_section] if rope_section else cfg)["rope_theta"] = rope_theta
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


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

    save_weights(model, out, dtype, ROPE_THETA[arch])
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


# ---------------------------------------------------------------------------
# mllama: a tiny Llama-3.2-Vision (MllamaForConditionalGeneration)
# ---------------------------------------------------------------------------
# The converter (TPU-MLIR 1.30.2) hard-codes 4 tiles, attention heads = 4 x KV
# heads, (image size / patch)^2 + 1 patches padded by 7 to a multiple of 8 and
# a pre-tile gate of 0.75 (tanh 0.63515): the sizes below respect all of it.
MLLAMA = dict(
    vocab_size=384,  # lm_head width; <|image|> is id 384, one of the 8 extra embedding rows
    hidden=64, layers=4, heads=4, kv_heads=1, intermediate=128, cross_layers=[1, 3],
    v_hidden=64, v_heads=4, v_layers=4, v_global_layers=2, v_intermediate=128,
    v_intermediate_layers=[1, 3], image_size=112, patch=14, tiles=4,
)
MLLAMA_VISION_STD = 0.05  # at 0.1 the image states swamp the text (answers collapse); at 0.02 they vanish
MLLAMA_PRE_TILE_GATE = 0.75  # the converter multiplies by tanh(0.75) whatever the weights say
MLLAMA_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>", "<|eom_id|>"]
MLLAMA_IMAGE_TOKEN = "<|image|>"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama-3.2-Vision-Instruct's template, reduced to what matters here: header
# markers, image content parts rendered as <|image|>, <|eot_id|> per turn.
MLLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def build_mllama_tokenizer():
    """Byte-level BPE with Llama-3's pre-tokenization; the Llama-3 specials take
    the last ids below vocab_size and <|image|> the id vocab_size."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    vocab = MLLAMA["vocab_size"]
    n_regular = vocab - len(MLLAMA_SPECIAL)
    trainer = trainers.BpeTrainer(vocab_size=n_regular, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    if tok.get_vocab_size() != n_regular:
        raise RuntimeError(f"BPE training gave {tok.get_vocab_size()} tokens, wanted {n_regular}")
    tok.add_special_tokens(MLLAMA_SPECIAL + [MLLAMA_IMAGE_TOKEN])
    if tok.get_vocab_size() != vocab + 1:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab + 1}")
    return tok


def save_mllama_tokenizer(out: Path) -> dict:
    from transformers import PreTrainedTokenizerFast

    tok = build_mllama_tokenizer()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>", unk_token=None, model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = MLLAMA_CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    # Mllama's image processor at 112 px, 4 tiles (classic keys: read by transformers 4.x and 5.x).
    pre = {
        "image_processor_type": "MllamaImageProcessor",
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD, "max_image_tiles": MLLAMA["tiles"],
        "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": MLLAMA["image_size"], "width": MLLAMA["image_size"]},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return {t: tok.token_to_id(t) for t in MLLAMA_SPECIAL + [MLLAMA_IMAGE_TOKEN]}


def make_mllama_config(special: dict):
    from transformers import MllamaConfig

    c = MLLAMA
    n_side = c["image_size"] // c["patch"]
    assert n_side % 4 == 0 and c["heads"] == 4 * c["kv_heads"] and c["tiles"] == 4
    vision = dict(
        hidden_size=c["v_hidden"], attention_heads=c["v_heads"], num_hidden_layers=c["v_layers"],
        num_global_layers=c["v_global_layers"], intermediate_size=c["v_intermediate"],
        intermediate_layers_indices=c["v_intermediate_layers"],
        vision_output_dim=c["v_hidden"] * (1 + len(c["v_intermediate_layers"])),
        image_size=c["image_size"], patch_size=c["patch"], max_num_tiles=c["tiles"], num_channels=3,
        hidden_act="gelu", norm_eps=1e-5, initializer_range=INIT_STD,
    )
    text = dict(
        vocab_size=c["vocab_size"], hidden_size=c["hidden"], num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        intermediate_size=c["intermediate"], cross_attention_layers=c["cross_layers"],
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA["llama"]},
        rms_norm_eps=1e-5, max_position_embeddings=MAX_POSITIONS, initializer_range=INIT_STD,
        tie_word_embeddings=False, bos_token_id=special["<|begin_of_text|>"],
        eos_token_id=[special["<|eot_id|>"], special["<|end_of_text|>"]],
        pad_token_id=special["<|finetune_right_pad_id|>"],
    )
    return MllamaConfig(vision_config=vision, text_config=text,
                        image_token_index=special[MLLAMA_IMAGE_TOKEN])


def _init_mllama_weights(model, seed: int):
    """Like _init_weights; every tanh gate gets a clear non-zero value (transformers
    starts them at 0, which would make the image invisible to the text)."""
    import torch

    _init_weights(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            vision = name.startswith(("model.vision_model.", "model.multi_modal_projector."))
            if vision and not ("norm" in name or "gate" in name or name.endswith(".bias")):
                p.mul_(MLLAMA_VISION_STD / INIT_STD)
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
            if name.endswith("pre_tile_positional_embedding.gate"):
                p.fill_(MLLAMA_PRE_TILE_GATE)
            elif "gate" in name and p.numel() == 1:
                p.copy_((0.5 + 0.5 * torch.rand(p.shape, generator=gen)).to(torch.bfloat16).float())


def _synthetic_image(w: int, h: int, phase: int):
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // max(1, w - 1) + phase) % 256, (y * 255 // max(1, h - 1)) % 256,
                    ((x + y) * 3 + 80 * phase) % 256], axis=-1).astype("uint8")
    return Image.fromarray(rgb, "RGB")


def mllama_image_processor(config_dir):
    """transformers' Mllama image processor (the PIL one when transformers has it:
    it needs no torchvision)."""
    try:
        from transformers import MllamaImageProcessorPil as cls
    except ImportError:
        from transformers import MllamaImageProcessor as cls
    return cls.from_pretrained(str(config_dir))


def check_mllama(model, out: Path) -> dict:
    """The image must matter: two images give different greedy answers."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    proc = mllama_image_processor(out)
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
        add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    img_id = tok.convert_tokens_to_ids(MLLAMA_IMAGE_TOKEN)
    pos = ids[0].tolist().index(img_id)
    answers = []
    for phase, size in ((0, (200, 120)), (1, (90, 160))):
        raw = proc(images=[[_synthetic_image(*size, phase)]], return_tensors="np")
        feats = {k: torch.from_numpy(raw[k]) for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
        n = ids.shape[1]
        xmask = torch.zeros(1, n, 1, MLLAMA["tiles"], dtype=torch.long)
        xmask[0, pos:, 0, :] = feats["aspect_ratio_mask"][0, 0]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=feats["pixel_values"], aspect_ratio_ids=feats["aspect_ratio_ids"],
                                 aspect_ratio_mask=feats["aspect_ratio_mask"], cross_attention_mask=xmask,
                                 max_new_tokens=12, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)
        answers.append(gen[0, n:].tolist())
    if answers[0] == answers[1]:
        raise RuntimeError(f"the image does not change the answer: {answers}")
    for a in answers:
        if len(set(a)) < 4:
            raise RuntimeError(f"greedy continuation collapsed: {a}")
    return {"image_token_pos": pos, "answers": answers}


def build_mllama(dtype: str, out: Path, seed: int = SEED) -> dict:
    import torch
    from transformers import GenerationConfig, MllamaForConditionalGeneration

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    special = save_mllama_tokenizer(out)
    config = make_mllama_config(special)
    model = MllamaForConditionalGeneration(config).to(torch.float32)
    _init_mllama_weights(model, seed)
    model.eval()
    checked = check_mllama(model, out)
    save_weights(model, out, dtype, ROPE_THETA["llama"], rope_section="text_config")
    eos = [special["<|eot_id|>"], special["<|end_of_text|>"]]
    GenerationConfig(bos_token_id=special["<|begin_of_text|>"], eos_token_id=eos,
                     pad_token_id=special["<|finetune_right_pad_id|>"]).save_pretrained(str(out))
    info = {"arch": "mllama", "dtype": dtype, "seed": seed, "vocab_size": MLLAMA["vocab_size"],
            "special_tokens": special, "eos_token_ids": eos, "image_token_id": special[MLLAMA_IMAGE_TOKEN],
            "image_check": checked}
    (out / "tinymodel.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["qwen2", "llama", "mllama"], required=True)
    ap.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.arch == "mllama":
        info = build_mllama(args.dtype, args.out, args.seed)
    else:
        info = build(args.arch, args.dtype, args.out, args.seed)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
