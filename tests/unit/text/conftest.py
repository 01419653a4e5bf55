"""Fixtures for the text layer: real tokenizers (fetched once, cached) loaded once per session."""

import os
import sys
from pathlib import Path

import pytest

# The helper sits beside this file; make it importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_tokenizers  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def qwen3_dir():
    return real_tokenizers.npm_tokenizer_dir("qwen3")


@pytest.fixture(scope="session")
def llama3_dir():
    return real_tokenizers.npm_tokenizer_dir("llama3")


@pytest.fixture(scope="session")
def qwen1_dir():
    return real_tokenizers.qwen1_tiktoken_dir()


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    from tpuchat.text import load_tokenizer

    return load_tokenizer(qwen3_dir)


@pytest.fixture(scope="session")
def llama3(llama3_dir):
    from tpuchat.text import load_tokenizer

    return load_tokenizer(llama3_dir)


@pytest.fixture(scope="session")
def qwen1(qwen1_dir):
    from tpuchat.text import load_tokenizer

    return load_tokenizer(qwen1_dir)


@pytest.fixture(scope="session")
def tiny_bpe_dir(tmp_path_factory):
    """A GPT-2 style vocab.json + merges.txt (WizardCoder / GPT-BigCode layout), trained here."""
    from tokenizers import ByteLevelBPETokenizer

    corpus = [
        "def main():\n    print('hello world')\n",
        "你好，世界！这是一个测试。",
        "emoji 🎉🚀👍 and more text for merges",
        "The quick brown fox jumps over the lazy dog.",
    ] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    d = tmp_path_factory.mktemp("tiny_bpe")
    bpe.save_model(str(d))
    return d


@pytest.fixture(scope="session")
def tiny_bpe(tiny_bpe_dir):
    from tpuchat.text import load_tokenizer

    return load_tokenizer(tiny_bpe_dir)


@pytest.fixture(params=["qwen3", "llama3", "qwen1", "tiny_bpe"])
def any_tokenizer(request):
    """Each kind of tokenizer in turn (HF tokenizer.json x2, tiktoken, GPT-2 vocab/merges)."""
    return request.getfixturevalue(request.param)
