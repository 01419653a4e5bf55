"""Qwen-7B v1's qwen.tiktoken, checked against tiktoken used directly and Qwen2/3's vocabulary."""

import base64

import pytest

from tpuchat.text.qwen_tiktoken import PAT_STR

KNOWN = {
    # Qwen2/3 share Qwen v1's 151,643 merges, so these are also the Qwen3 tokenizer.json ids
    "Hello world": [9707, 1879],
    "你好，世界": [108386, 3837, 99489],
}


@pytest.fixture(scope="module")
def direct(qwen1_dir):
    """tiktoken built straight from the file, without our class."""
    import tiktoken

    ranks = {}
    for line in (qwen1_dir / "qwen.tiktoken").read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ["<|extra_{}|>".format(i) for i in range(205)]
    return tiktoken.Encoding(
        "qwen-direct",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={t: 151643 + i for i, t in enumerate(specials)},
    )


def test_known_ids(qwen1, qwen3):
    for text, ids in KNOWN.items():
        assert qwen1.encode(text) == ids
        assert qwen3.encode(text) == ids


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "你好，世界！",
        "emoji 🎉👨‍👩‍👧 done",
        "def f(x):\n\treturn x**2  # 平方\n",
        "  leading and trailing  ",
    ],
)
def test_round_trip_and_agreement_with_tiktoken(qwen1, qwen3, direct, text):
    ids = qwen1.encode(text)
    assert ids == direct.encode(text, allowed_special="all")
    assert ids == qwen3.encode(text)
    assert qwen1.decode(ids) == text == direct.decode(ids)


def test_special_tokens(qwen1, direct):
    assert qwen1.token_to_id("<|endoftext|>") == 151643
    assert qwen1.token_to_id("<|im_start|>") == 151644
    assert qwen1.token_to_id("<|im_end|>") == 151645
    assert qwen1.token_to_id("<|extra_0|>") == 151646
    assert qwen1.token_to_id("<|extra_204|>") == 151850
    assert direct.encode("<|im_end|>", allowed_special="all") == [151645]
    assert qwen1.encode("<|im_start|>user\nhi<|im_end|>") == [151644, 872, 198, 6023, 151645]
    assert len(qwen1.special_tokens) == 208
    assert qwen1.token_to_id("Hello") == 9707
    assert qwen1.token_to_id("no-such-token-xyz") is None


def test_decode_skips_specials_and_ids_beyond_the_vocabulary(qwen1):
    ids = [151644] + qwen1.encode("hi") + [151645, 151900]  # 151900: padded embedding row
    assert qwen1.decode(ids) == "hi"
    assert qwen1.decode(ids, skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"


def test_nfc_normalisation_like_qwen(qwen1):
    assert qwen1.encode("e\u0301") == qwen1.encode("\u00e9")


def test_stop_ids(qwen1, tmp_path, qwen1_dir):
    # no config files: <|endoftext|> (eos) and <|im_end|> (ChatML turn end)
    assert qwen1.eos_ids == {151643, 151645}
    assert qwen1.stop_strings == ["<|endoftext|>", "<|im_end|>"]
