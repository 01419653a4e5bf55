"""GPT-2 style vocab.json + merges.txt (WizardCoder / GPT-BigCode) tokenizers."""

from tpuchat.text import IncrementalDecoder

TEXTS = [
    "def main():\n    print('hello world')\n",
    "你好，世界！这是一个测试。",
    "emoji 🎉🚀👍 never seen: 🦀 ñ",
    "  indented\tand trailing  ",
]


def test_loads_and_round_trips(tiny_bpe, tiny_bpe_dir):
    from tokenizers import ByteLevelBPETokenizer

    raw = ByteLevelBPETokenizer(str(tiny_bpe_dir / "vocab.json"), str(tiny_bpe_dir / "merges.txt"))
    assert tiny_bpe.kind == "gpt2-bpe"
    for text in TEXTS:
        ids = tiny_bpe.encode(text)
        assert ids == raw.encode(text).ids
        assert tiny_bpe.decode(ids) == text


def test_eos_and_default_wizardcoder_prompt(tiny_bpe):
    eot = tiny_bpe.token_to_id("<|endoftext|>")
    assert eot is not None and tiny_bpe.eos_ids == {eot}
    history = [
        {"role": "user", "content": "Write hello world."},
        {"role": "assistant", "content": "print('hi')"},
        {"role": "user", "content": "In C?"},
    ]
    assert tiny_bpe.apply_chat_template(history) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWrite hello world.\n\n### Response:print('hi')<|endoftext|>\n\n"
        "### Instruction:\nIn C?\n\n### Response:"
    )
    assert tiny_bpe.apply_chat_template(history[:1], system="Be brief.").startswith("Be brief.\n\n### Instruction:")
    # the Alpaca preamble is what a user's system prompt replaces
    assert tiny_bpe.default_system_prompt.startswith("Below is an instruction")


def test_streams(tiny_bpe):
    for text in TEXTS:
        ids = tiny_bpe.encode(text)
        dec = IncrementalDecoder(tiny_bpe, window=4)
        chunks = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(chunks) == tiny_bpe.decode(ids) == text
