"""tokenizer.json read with the `tokenizers` library alone (hf_fast.py) gives transformers'
results: the same ids, text, special tokens, stop ids and chat prompts."""

import functools
import random
from pathlib import Path

import pytest

from tpuchat.text import IncrementalDecoder, load_tokenizer
from tpuchat.text.hf import HFTokenizer
from tpuchat.text.hf_fast import FastHFTokenizer, can_load

FIXTURE_DIR = Path(__file__).resolve().parents[3] / "token_config"  # the demo/test bmodels' tokenizer

TEXTS = [
    "Hello, world!",
    "  leading spaces and trailing  \n\n\tTabs\r\nCRLF",
    "写一个 Python 函数 🐍🎉 emoji and 中文，标点。",
    "<|im_start|>user\nhi<|im_end|> <|eot_id|><|begin_of_text|> special tokens as text",
    "code: def f(a , b):\n    return a+b  # comment\n",
    "numbers 1234567890 3.14159 and URLs https://example.com/a?b=c",
    "",
]

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief. 用中文。"}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "写一个函数 🐍\n```py\nx=1\n```"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  b  "}, {"role": "user", "content": "c"}],
]


@functools.lru_cache(maxsize=None)
def _transformers(directory):
    """transformers' own tokenizer for the dir (the reference), and ours through transformers."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True), HFTokenizer.load(directory)


@pytest.fixture(params=["qwen3", "llama3", "fixture"])
def pair(request):
    d = FIXTURE_DIR if request.param == "fixture" else request.getfixturevalue(request.param + "_dir")
    fast = load_tokenizer(d)
    ref, slow = _transformers(d)
    return request.param, fast, ref, slow


def _ids(result):
    return list(result["input_ids"]) if hasattr(result, "keys") else list(result)


def test_tokenizer_json_dirs_load_without_transformers(pair):
    _, fast, _, _ = pair
    assert isinstance(fast, FastHFTokenizer) and fast.kind == "hf"


def test_encode_decode_match_transformers(pair):
    _, fast, ref, slow = pair
    for text in TEXTS:
        ids = fast.encode(text)
        assert ids == list(ref.encode(text, add_special_tokens=False)) == slow.encode(text)
        for skip in (True, False):
            assert fast.decode(ids, skip) == slow.decode(ids, skip)
    rng = random.Random(7)
    specials = sorted(fast.special_tokens.values())
    for _ in range(50):  # arbitrary ids: broken UTF-8, special tokens in the middle
        ids = [rng.randrange(fast.vocab_size) for _ in range(rng.randrange(1, 12))] + [rng.choice(specials)]
        rng.shuffle(ids)
        for skip in (True, False):
            assert fast.decode(ids, skip) == slow.decode(ids, skip)


def test_vocabulary_and_special_tokens_match(pair):
    _, fast, ref, slow = pair
    assert fast.vocab_size == slow.vocab_size == len(ref)
    assert fast.special_tokens == slow.special_tokens
    assert (fast.bos_token, fast.eos_token) == (ref.bos_token, ref.eos_token)
    assert fast.eos_ids == slow.eos_ids and fast.stop_strings == slow.stop_strings
    assert fast.default_system_prompt == slow.default_system_prompt
    for token in ("<|im_start|>", "<|eot_id|>", "hello", "not-a-token-xyz"):
        assert fast.token_to_id(token) == slow.token_to_id(token)


def test_template_variables_are_transformers_special_tokens_map(pair):
    _, fast, ref, _ = pair
    expected = {k: v for k, v in ref.special_tokens_map.items() if v}
    assert {k: v for k, v in fast.special_tokens_map.items() if v} == expected


def test_chat_prompts_match_apply_chat_template(pair):
    name, fast, ref, _ = pair
    kwargs = [{}, {"enable_thinking": False}] if name == "qwen3" else [{}]
    for messages in CONVERSATIONS:
        for add in (True, False):
            for kw in kwargs:
                expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add, **kw)
                assert fast.apply_chat_template(messages, add, **kw) == expected
                assert fast.encode_chat(messages, add, **kw) == _ids(
                    ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=add, **kw))


def test_streamed_text_matches(pair):
    _, fast, _, slow = pair
    ids = fast.encode("流式输出 streaming 🎉 text\n```\ncode\n```" * 3) + [fast.token_to_id(fast.stop_strings[0])]
    out = {}
    for tok in (fast, slow):
        dec = IncrementalDecoder(tok)
        pieces = [dec.push(i) for i in ids] + [dec.flush()]
        out[type(tok).__name__] = pieces
        assert "".join(pieces) == tok.decode(ids)
    assert out["FastHFTokenizer"] == out["HFTokenizer"]


def test_classes_that_transformers_rebuilds_are_left_to_it(tmp_path, qwen3_dir):
    import json
    import shutil

    shutil.copy(str(qwen3_dir / "tokenizer.json"), str(tmp_path / "tokenizer.json"))
    for config, fast in (({"tokenizer_class": "Qwen2Tokenizer"}, True), ({"tokenizer_class": "LlamaTokenizer"}, False),
                         ({"tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": True}, False)):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        assert can_load(tmp_path) == fast
        assert isinstance(load_tokenizer(tmp_path), FastHFTokenizer) == fast
