"""Fast checks without the device: option parsing, context budget, runtime
search order, bmodel file checks."""

import struct

import pytest

from tpuchat.chat.conversation import Conversation
from tpuchat.options import parse_devids
from tpuchat.errors import ModelError, PromptTooLong, RuntimeNotFound, TpuchatError
from tpuchat.runtime import libfind
from tpuchat.runtime.bmodel_file import MAGIC, check_bmodel_file


@pytest.mark.parametrize("text, ids", [("0", [0]), ("2,3", [2, 3]), (" 1, 4 ", [1, 4])])
def test_devid_lists(text, ids):
    assert parse_devids(text) == ids


@pytest.mark.parametrize("text", ["", "a", "1,,x", "-1", "2,2"])
def test_bad_devid_lists(text):
    with pytest.raises(TpuchatError, match="device"):
        parse_devids(text)


class WordTokenizer:
    """One token per word, plus 2 per message for the template's markers."""

    def encode_chat(self, messages, system=None):
        msgs = ([{"role": "system", "content": system}] if system else []) + list(messages)
        return [0] * sum(len(m["content"].split()) + 2 for m in msgs)


def turns(conv, n, words=10):
    for i in range(n):
        conv.add("user", " ".join(["q"] * words))
        conv.add("assistant", " ".join(["a"] * words))


def test_everything_fits():
    c = Conversation(system="be kind")
    turns(c, 2)
    c.add("user", "hello")
    ids, dropped = c.fit(WordTokenizer(), seq_len=100, kv_len=200, answer_room=10)
    assert dropped == 0 and len(ids) == 4 + 4 * 12 + 3


def test_oldest_turns_are_dropped_and_the_system_prompt_kept():
    c = Conversation(system="be kind")
    turns(c, 5)
    c.add("user", "last question")
    ids, dropped = c.fit(WordTokenizer(), seq_len=40, kv_len=200, answer_room=10)
    # system 4 + question 4 + two whole turns of 24 would be 56 > 40: one turn fits.
    assert dropped == 4 and len(ids) == 4 + 24 + 4
    assert len(c.messages) == 11  # the conversation itself is untouched


def test_room_for_the_answer_counts_against_the_kv_length():
    c = Conversation()
    turns(c, 3)
    c.add("user", "q")
    _, dropped = c.fit(WordTokenizer(), seq_len=100, kv_len=60, answer_room=30)
    assert dropped == 2


def test_a_message_that_cannot_fit_alone_is_an_error():
    c = Conversation()
    c.add("user", "w " * 500)
    with pytest.raises(PromptTooLong, match="needs 502 prompt tokens"):
        c.fit(WordTokenizer(), seq_len=256, kv_len=256, answer_room=16)


def test_explicit_runtime_dir_must_hold_the_libraries(tmp_path, monkeypatch):
    monkeypatch.delenv("TPUCHAT_LIBSOPHON", raising=False)
    with pytest.raises(RuntimeNotFound, match="no libbmrt/libbmlib in"):
        libfind.find_runtime(str(tmp_path))


def test_search_order(tmp_path, monkeypatch):
    env_dir, sim = tmp_path / "env", tmp_path / "cache"
    for d in (env_dir, sim / "simulator" / libfind.SIMULATOR_VERSION):
        d.mkdir(parents=True)
        for n in ("libbmrt.so.1.0", "libbmlib.so.0"):
            (d / n).write_bytes(b"")
    (sim / "simulator" / libfind.SIMULATOR_VERSION / "libcmodel.so").write_bytes(b"")
    monkeypatch.setenv("TPUCHAT_CACHE", str(sim))
    monkeypatch.setattr(libfind, "BOARD_LIB_DIR", tmp_path / "no-board")
    monkeypatch.setenv("TPUCHAT_LIBSOPHON", str(env_dir))
    loc = libfind.find_runtime()
    assert loc.path == env_dir and loc.kind == "hardware" and loc.source == "TPUCHAT_LIBSOPHON"
    monkeypatch.delenv("TPUCHAT_LIBSOPHON")
    loc = libfind.find_runtime()
    assert loc.kind == "simulator" and loc.source == "simulator cache"
    monkeypatch.setenv("TPUCHAT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(RuntimeNotFound, match="tpuchat sim install"):
        libfind.find_runtime()


def fake_bmodel(path, chip=b"BM1684X", declared_extra=0):
    fb = b"\x00\x00libbm1684x_kernel_module.so\x00" + chip + b"\x00" + b"2.2+v1.30.2-20260831\x00" + b"\x00" * 8
    body = b"\x01" * 100
    header = struct.pack("<IIIQ", MAGIC, 64, len(fb), len(body) + declared_extra).ljust(64, b"\x00")
    path.write_bytes(header + fb + body)
    return path


def test_header_check_reads_chip_and_toolchain(tmp_path):
    info = check_bmodel_file(fake_bmodel(tmp_path / "a.bmodel"))
    assert info.chip == "BM1684X" and info.toolchain == "2.2+v1.30.2-20260831"


def test_header_check_refuses_other_chips_and_short_files(tmp_path):
    with pytest.raises(ModelError, match="compiled for BM1688"):
        check_bmodel_file(fake_bmodel(tmp_path / "b.bmodel", chip=b"BM1688"))
    with pytest.raises(ModelError, match="truncated"):
        check_bmodel_file(fake_bmodel(tmp_path / "c.bmodel", declared_extra=10))
    (tmp_path / "d.bmodel").write_bytes(b"\xee\xaa")
    with pytest.raises(ModelError, match="too short"):
        check_bmodel_file(tmp_path / "d.bmodel")
    with pytest.raises(ModelError, match="directory"):
        check_bmodel_file(tmp_path)


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, tpuchat, tpuchat.cli; "
            "bad = [m for m in ('transformers', 'torch', 'textual', 'tpuchat._shim') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_system_prefix_ids_start_every_conversation():
    """The pinned prefix for a shared system prompt is a head of the prompt
    ids whatever the user writes, and covers the whole document."""
    from pathlib import Path

    from tpuchat.chat.session import system_prefix_ids
    from tpuchat.text import load_tokenizer

    tok = load_tokenizer(Path(__file__).resolve().parents[2] / "token_config")
    doc = "Shared manual: the BM1684X has 32 TOPS. 算力很强。" * 3
    prefix = system_prefix_ids(tok, doc)
    assert len(prefix) > len(tok.encode(doc))
    for user in ["a", " leading space", "\nnewline first", "中文问题", "<|im_end|>"]:
        ids = tok.encode_chat([{"role": "user", "content": user}], system=doc)
        assert ids[:len(prefix)] == prefix, user


def test_run_stats_line_shows_the_image_encoder_time():
    """FTL is counted from the prompt; an image's vit run comes before it and is shown apart."""
    from tpuchat.cli import _stats_line

    r = {"ftl_s": 3.1, "tokens_per_s": 1.2, "prompt_tokens": 27, "new_tokens": 12, "stop_reason": "eos",
         "device_ms_per_token": 800.0, "host_us_per_token": 60.0}
    assert _stats_line(r).startswith("FTL 3.100 s")
    assert _stats_line(dict(r, vit_s=4.25)).startswith("vit 4.250 s (image encoder, before the prompt) | FTL 3.100 s")
