"""Which tokenizer dir is used, which kind is loaded from it, and what loading costs."""

import json
import shutil
import subprocess
import sys

import pytest

from tpuchat.errors import TokenizerError
from tpuchat.text import find_tokenizer_dir, load_tokenizer, open_tokenizer, tokenizer_kind


def _tokenizer_dir(path):
    path.mkdir(parents=True)
    (path / "tokenizer.json").write_text("{}")
    return path


def test_search_order_prefers_explicit_then_bmodel_config_then_cwd(tmp_path):
    bmodel = tmp_path / "models" / "qwen.bmodel"
    bmodel.parent.mkdir()
    bmodel.write_bytes(b"")
    cwd = tmp_path / "work"
    cwd.mkdir()
    explicit = _tokenizer_dir(tmp_path / "mine")

    # nothing anywhere: the error names both places searched
    with pytest.raises(TokenizerError) as err:
        find_tokenizer_dir(None, bmodel, cwd=cwd)
    assert str(bmodel.parent / "config") in str(err.value)
    assert str(cwd / "token_config") in str(err.value)

    cwd_dir = _tokenizer_dir(cwd / "token_config")
    assert find_tokenizer_dir(None, bmodel, cwd=cwd) == cwd_dir
    config_dir = _tokenizer_dir(bmodel.parent / "config")
    assert find_tokenizer_dir(None, bmodel, cwd=cwd) == config_dir
    assert find_tokenizer_dir(explicit, bmodel, cwd=cwd) == explicit
    # a file inside the dir names the dir
    assert find_tokenizer_dir(explicit / "tokenizer.json", bmodel, cwd=cwd) == explicit
    # without a bmodel only ./token_config is searched
    assert find_tokenizer_dir(None, None, cwd=cwd) == cwd_dir


def test_bmodel_config_dir_without_tokenizer_files_is_skipped(tmp_path):
    bmodel = tmp_path / "m.bmodel"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text("{}")
    cwd_dir = _tokenizer_dir(tmp_path / "cwd" / "token_config")
    assert find_tokenizer_dir(None, bmodel, cwd=tmp_path / "cwd") == cwd_dir


def test_explicit_dir_problems_are_reported_not_bypassed(tmp_path):
    _tokenizer_dir(tmp_path / "token_config")
    with pytest.raises(TokenizerError, match="does not exist"):
        find_tokenizer_dir(tmp_path / "nope", None, cwd=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="holds no tokenizer"):
        find_tokenizer_dir(tmp_path / "empty", None, cwd=tmp_path)


def test_kind_detection(tmp_path):
    for name, files in [
        ("hf", ["tokenizer.json", "tokenizer_config.json"]),
        ("qwen-tiktoken", ["qwen.tiktoken", "tokenizer_config.json"]),
        ("gpt2-bpe", ["vocab.json", "merges.txt"]),
        ("sp", ["tokenizer.model", "tokenizer_config.json"]),
        ("none", ["config.json", "vocab.json"]),
    ]:
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_text("")
    assert tokenizer_kind(tmp_path / "hf") == "hf"
    assert tokenizer_kind(tmp_path / "qwen-tiktoken") == "qwen-tiktoken"
    assert tokenizer_kind(tmp_path / "gpt2-bpe") == "gpt2-bpe"
    assert tokenizer_kind(tmp_path / "sp") == "hf"
    assert tokenizer_kind(tmp_path / "none") is None
    with pytest.raises(TokenizerError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "none")


def test_broken_tokenizer_json_is_a_tokenizer_error(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "tokenizer.json").write_text("not json")
    with pytest.raises(TokenizerError, match="cannot load the tokenizer"):
        load_tokenizer(d)


def test_loads_each_kind(qwen3, llama3, qwen1, tiny_bpe):
    assert (qwen3.kind, llama3.kind, qwen1.kind, tiny_bpe.kind) == ("hf", "hf", "qwen-tiktoken", "gpt2-bpe")
    assert qwen3.vocab_size == 151669
    assert llama3.vocab_size == 128256
    assert qwen1.vocab_size == 151851  # 151,643 merges + 208 special tokens


def test_open_tokenizer_from_bmodel_config_dir(tmp_path, qwen1_dir):
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(str(qwen1_dir / "qwen.tiktoken"), str(config / "qwen.tiktoken"))
    tok = open_tokenizer(None, tmp_path / "qwen-7b.bmodel")
    assert tok.kind == "qwen-tiktoken" and tok.path == config


def test_import_is_cheap_and_tiktoken_path_never_imports_transformers(qwen1_dir):
    code = (
        "import sys, tpuchat.text as t\n"
        "assert 'transformers' not in sys.modules and 'tiktoken' not in sys.modules\n"
        "tok = t.load_tokenizer(sys.argv[1])\n"
        "assert tok.encode_chat([{'role': 'user', 'content': 'hi'}])\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(qwen1_dir)], check=True)


def test_generation_defaults_are_read(tmp_path, qwen1_dir):
    shutil.copy(str(qwen1_dir / "qwen.tiktoken"), str(tmp_path / "qwen.tiktoken"))
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {"eos_token_id": 151643, "top_p": 0.8, "top_k": 0, "repetition_penalty": 1.1, "chat_format": "chatml"}
        )
    )
    tok = load_tokenizer(tmp_path)
    assert tok.generation_defaults == {"top_p": 0.8, "top_k": 0, "repetition_penalty": 1.1}
