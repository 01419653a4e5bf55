"""Streaming detokenization equals the full decode, for every kind of tokenizer."""

import json
import random

import pytest

from tpuchat.text import IncrementalDecoder, load_tokenizer

TEXTS = {
    "chinese": "你好，世界！今天天气很好，我们去公园散步吧。深度学习模型在边缘设备上运行。",
    "emoji": "Family 👨‍👩‍👧‍👦, flags 🇨🇳🇺🇸, skin 👍🏽, rocket 🚀🚀 and 🦀 crab.",
    "code": (
        'def fib(n: int) -> int:\n    """斐波那契"""\n    if n < 2:\n        return n\n'
        '    return fib(n - 1) + fib(n - 2)\n\n\tprint(f"{fib(10)=}")  # → 55\n'
    ),
    "spaces": " leading space,  double  spaces , trailing  ",
    "mixed": "Qwen说：“Hello, 世界!” 😀 then `x = [1, 2, 3]`\n\n" * 3,
}


def _stream(tok, ids, **kw):
    dec = IncrementalDecoder(tok, **kw)
    chunks = [dec.push(i) for i in ids]
    return chunks, dec.flush()


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_stream_equals_full_decode(any_tokenizer, name):
    text = TEXTS[name]
    ids = any_tokenizer.encode(text)
    chunks, tail = _stream(any_tokenizer, ids)
    assert "".join(chunks) + tail == any_tokenizer.decode(ids) == text
    assert tail == ""  # valid text is fully out before the turn ends
    assert not any("\ufffd" in c for c in chunks)


def test_split_characters_are_held_back_not_broken(qwen3):
    # a rare character: one character, several byte-level tokens
    char = next(c for c in "𓀀𝄞🫨龘" if len(qwen3.encode(c)) > 1)
    ids = qwen3.encode(char)
    assert "\ufffd" in qwen3.decode(ids[:1])
    chunks, tail = _stream(qwen3, ids)
    assert chunks[:-1] == [""] * (len(ids) - 1) and chunks[-1] == char and tail == ""


def test_leading_space_of_a_token_is_kept(llama3):
    ids = llama3.encode("Hello world again")
    chunks, _ = _stream(llama3, ids)
    assert chunks == ["Hello", " world", " again"]


def test_skip_special_tokens_choice(qwen3):
    ids = qwen3.encode("<think>\n想一想\n</think>\n\n答案<|im_end|>")
    for skip in (True, False):
        chunks, tail = _stream(qwen3, ids, skip_special_tokens=skip)
        assert "".join(chunks) + tail == qwen3.decode(ids, skip_special_tokens=skip)
    assert "<|im_end|>" not in qwen3.decode(ids) and "<think>" in qwen3.decode(ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_ids_including_broken_utf8(any_tokenizer, seed):
    """Arbitrary id sequences (invalid UTF-8, specials) still concatenate to the full decode."""
    rng = random.Random(seed)
    limit = min(any_tokenizer.vocab_size, 151851)
    ids = [rng.randrange(limit) for _ in range(300)]
    for skip in (True, False):
        for window in (4, 16):
            chunks, tail = _stream(any_tokenizer, ids, skip_special_tokens=skip, window=window)
            assert "".join(chunks) + tail == any_tokenizer.decode(ids, skip_special_tokens=skip)


def test_window_keeps_per_token_cost_bounded(any_tokenizer):
    """Each push decodes a bounded number of ids, however long the answer."""
    tok = any_tokenizer
    lengths = []

    class Counting(object):
        def decode(self, ids, skip_special_tokens=True):
            lengths.append(len(ids))
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tok.encode("".join(TEXTS.values()) * 4)
    assert len(ids) > 400
    dec = IncrementalDecoder(Counting(), window=16)
    out = "".join(dec.push(i) for i in ids) + dec.flush()
    assert out == tok.decode(ids)
    assert max(lengths) <= 2 * 16 + 1


def test_reset_starts_a_new_turn(qwen1):
    dec = IncrementalDecoder(qwen1)
    dec.extend(qwen1.encode("first answer"))
    dec.flush()
    dec.reset()
    assert dec.extend(qwen1.encode("第二")) + dec.flush() == "第二"
    assert dec.ids == qwen1.encode("第二")


def test_sentencepiece_style_leading_space(tmp_path):
    """A Metaspace (SentencePiece, Llama-2 style) decoder drops the space of whatever token is
    decoded first; windows that start mid-text must not lose it."""
    from tokenizers import SentencePieceBPETokenizer

    corpus = ["the quick brown fox jumps over the lazy dog", "hello world from a tiny model"] * 30
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(
        corpus, vocab_size=120, min_frequency=1, special_tokens=["<unk>", "</s>"], show_progress=False
    )
    sp.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    tok = load_tokenizer(tmp_path)
    text = " ".join(corpus[:6])
    ids = tok.encode(text)
    # the point of the test: alone, a mid-text word-initial token loses its space
    assert any(
        tok.decode(ids[i : i + 1]) != tok.decode(ids[: i + 1])[len(tok.decode(ids[:i])) :] for i in range(1, len(ids))
    )
    for window in (4, 16):
        chunks, tail = _stream(tok, ids, window=window)
        assert "".join(chunks) + tail == tok.decode(ids) == text
