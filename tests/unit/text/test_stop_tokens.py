"""Stop ids from config files and templates, and the stop-string helper."""

import json
import shutil

import pytest

from tpuchat.text import StopStringMatcher, config_eos_ids, find_stop_string, load_tokenizer


def _copy_hf(src, dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(str(src / f), str(dst / f))


def test_stop_ids_of_real_tokenizers(qwen3, llama3):
    assert qwen3.eos_ids == {151645, 151643}  # <|im_end|> (eos, turn end), <|endoftext|>
    assert llama3.eos_ids == {128009, 128001}  # <|eot_id|> (turn end), <|end_of_text|> (eos)
    assert llama3.stop_strings == ["<|end_of_text|>", "<|eot_id|>"]


def test_eos_list_from_generation_config_is_added(tmp_path, llama3_dir):
    _copy_hf(llama3_dir, tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 128001}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_ids == {128001, 128008, 128009}


def test_config_eos_ids_forms(tmp_path):
    assert config_eos_ids(tmp_path) == set()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2, "text_config": {"eos_token_id": [7, 8]}}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, None, True]}))
    assert config_eos_ids(tmp_path) == {2, 5, 7, 8}
    (tmp_path / "generation_config.json").write_text("{broken")
    assert config_eos_ids(tmp_path) == {2, 7, 8}


def test_qwen1_generation_config_and_chatml_turn_end(tmp_path, qwen1_dir):
    shutil.copy(str(qwen1_dir / "qwen.tiktoken"), str(tmp_path / "qwen.tiktoken"))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 151643, "pad_token_id": 151643}))
    assert load_tokenizer(tmp_path).eos_ids == {151643, 151645}


def test_template_turn_end_is_a_stop_even_if_unlisted(tmp_path, qwen3_dir):
    """A ChatML template whose config names another eos: <|im_end|> is still found."""
    _copy_hf(qwen3_dir, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token == "<|endoftext|>"
    assert {151643, 151645} <= tok.eos_ids


def test_find_stop_string():
    assert find_stop_string("abc</s>def<|im_end|>", ["<|im_end|>", "</s>"]) == (3, "</s>")
    assert find_stop_string("abc", ["x", ""]) is None


@pytest.mark.parametrize("pieces", [["Hello <|im_", "end|> tail"], ["Hello ", "<", "|im_end|>"], ["Hello <|im_end|>x"]])
def test_stop_string_matcher_across_pushes(pieces):
    m = StopStringMatcher(["<|im_end|>", "\nUser:"])
    out = "".join(m.push(p) for p in pieces) + m.flush()
    assert out == "Hello " and m.stopped and m.matched == "<|im_end|>"
    assert m.push("more") == ""


def test_stop_string_matcher_releases_false_alarms():
    m = StopStringMatcher(["\nUser:"])
    assert m.push("a\nUs") == "a"
    assert m.push("e it") == "\nUse it"
    assert m.push("\n") == ""
    assert m.flush() == "\n" and not m.stopped
