"""Prompts rendered from the model's own template equal transformers' apply_chat_template."""

import functools
import json
import shutil

import pytest

from tpuchat.text import load_tokenizer
from tpuchat.text.templates import ALPACA_TEMPLATE, CHATML_TEMPLATE, read_chat_template, render_template

SYSTEM = "You are terse. 用中文回答。"
CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "写一个 Python 函数 🐍\n```python\ndef f(x):\n    return x\n```"},
    {"role": "assistant", "content": "  def g(): pass  "},
    {"role": "user", "content": "Thanks! And now?"},
]


@functools.lru_cache(maxsize=None)
def _reference(directory):
    """A separate transformers tokenizer, loaded the plain way (once per dir: ~1 s each)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def _ids(result):
    # transformers 5 returns a BatchEncoding for tokenize=True, 4.x a list
    return list(result["input_ids"]) if hasattr(result, "keys") else list(result)


@pytest.mark.parametrize("name", ["qwen3", "llama3"])
def test_multi_turn_with_system_matches_transformers(request, name):
    tok = request.getfixturevalue(name)
    ref = _reference(request.getfixturevalue(name + "_dir"))
    messages = [{"role": "system", "content": SYSTEM}] + CONVERSATION
    for add_generation_prompt in (True, False):
        expected_text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        expected_ids = _ids(
            ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        )
        assert tok.apply_chat_template(CONVERSATION, add_generation_prompt, system=SYSTEM) == expected_text
        assert tok.apply_chat_template(messages, add_generation_prompt) == expected_text
        assert tok.encode_chat(CONVERSATION, add_generation_prompt, system=SYSTEM) == expected_ids
        assert (
            tok.apply_chat_template(CONVERSATION, add_generation_prompt, system=SYSTEM, tokenize=True) == expected_ids
        )


@pytest.mark.parametrize("name", ["qwen3", "llama3"])
def test_prompt_ids_match_the_raw_tokenizers_library(request, name):
    """Independent of transformers: the tokenizers library on the same tokenizer.json."""
    from tokenizers import Tokenizer as RawTokenizer

    tok = request.getfixturevalue(name)
    raw = RawTokenizer.from_file(str(request.getfixturevalue(name + "_dir") / "tokenizer.json"))
    text = tok.apply_chat_template(CONVERSATION, system=SYSTEM)
    assert tok.encode_chat(CONVERSATION, system=SYSTEM) == raw.encode(text, add_special_tokens=False).ids


def test_known_prompt_shapes(qwen3, llama3):
    user = [{"role": "user", "content": "hi"}]
    assert qwen3.apply_chat_template(user, system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert llama3.apply_chat_template(user) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = llama3.encode_chat(user)
    assert ids[0] == 128000 and ids.count(128000) == 1  # BOS once: written by the template only


def test_system_prompt_replaces_an_existing_one(qwen3):
    messages = [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]
    text = qwen3.apply_chat_template(messages, system="new")
    assert "new" in text and "old" not in text
    assert messages[0]["content"] == "old"  # the caller's list is untouched


def test_default_system_prompt(qwen3, llama3, qwen1, tmp_path, qwen3_dir):
    assert qwen3.default_system_prompt is None
    assert llama3.default_system_prompt is None
    assert qwen1.default_system_prompt == "You are a helpful assistant."
    # Qwen2's template (a chat_template.jinja file) inserts a default system prompt
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(str(qwen3_dir / f), str(tmp_path / f))
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    qwen2_style = load_tokenizer(tmp_path)
    assert qwen2_style.chat_template == CHATML_TEMPLATE
    assert qwen2_style.default_system_prompt == "You are a helpful assistant."
    user = [{"role": "user", "content": "hi"}]
    # (the template is passed explicitly: transformers < 4.49 does not read chat_template.jinja)
    assert qwen2_style.apply_chat_template(user) == _reference(tmp_path).apply_chat_template(
        user, chat_template=CHATML_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert "helpful" not in qwen2_style.apply_chat_template(user, system="Be brief.")


def test_qwen1_chatml_matches_qwen_make_context(qwen1, qwen3):
    """Qwen v1's chat() builds this text in code; its vocabulary equals Qwen2/3's, so the
    Qwen3 tokenizer.json gives independent expected ids."""
    history = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    text = qwen1.apply_chat_template(history)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n你好！有什么可以帮你？<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert qwen1.encode_chat(history) == qwen3.encode(text)
    assert qwen1.encode_chat(history)[:3] == [151644, 8948, 198]  # <|im_start|> system \n


def _transformers_render(template, messages, add_generation_prompt, special):
    from transformers.utils import chat_template_utils as ctu

    if hasattr(ctu, "render_jinja_template"):  # transformers >= 4.51
        rendered, _ = ctu.render_jinja_template(
            conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt, **special
        )
        return rendered[0]
    compiled = ctu._compile_jinja_template(template)
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)


@pytest.mark.parametrize("which", ["qwen3", "llama3", "chatml", "alpaca"])
def test_own_renderer_matches_transformers_renderer(request, which):
    """The Jinja setup used for non-transformers tokenizers renders like transformers."""
    if which in ("qwen3", "llama3"):
        template = read_chat_template(request.getfixturevalue(which + "_dir"))
    else:
        template = CHATML_TEMPLATE if which == "chatml" else ALPACA_TEMPLATE
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    for messages in (CONVERSATION, [{"role": "system", "content": SYSTEM}] + CONVERSATION):
        for add in (True, False):
            ours = render_template(template, messages, add, special_tokens=special)
            assert ours == _transformers_render(template, messages, add, special)


def test_tokenizer_config_template_list_and_jinja_file(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})
    )
    assert read_chat_template(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert read_chat_template(tmp_path) == "J"
    assert read_chat_template(tmp_path / "missing") is None


def test_template_kwargs_reach_the_template(qwen3, qwen3_dir):
    """Qwen3's enable_thinking switch, passed through like transformers does."""
    ref = _reference(qwen3_dir)
    user = [{"role": "user", "content": "hi"}]
    ours = qwen3.apply_chat_template(user, enable_thinking=False)
    assert ours.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ours == ref.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert qwen3.encode_chat(user, enable_thinking=False) == qwen3.encode(ours)
