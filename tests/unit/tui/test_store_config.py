"""The SQLite store and the TOML settings."""

import json
import sqlite3

from tpuchat import config as cfg
from tpuchat.runtime.protocol import GenerationStats
from tpuchat.store import Store


def test_store_roundtrip_and_search(tmp_path):
    s = Store(tmp_path / "chats.db")
    c = s.new_conversation("Bubble sort", system="be brief", model="m.bmodel", settings={"temperature": 0.5})
    u = s.add_message(c.id, "user", "sort 100% of it")
    a = s.add_message(c.id, "assistant", "", stopped=True, model="m.bmodel")
    s.update_message(a, content="partial", stats=GenerationStats.partial(
        ftl_s=0.5, tokens_per_s=12.0, new_tokens=3, prompt_tokens=20, stop_reason="cancelled"))
    msgs = s.messages(c.id)
    assert [m.id for m in msgs] == [u, a]
    assert msgs[1].stopped and msgs[1].content == "partial" and msgs[1].stats.new_tokens == 3
    assert s.get_conversation(c.id).settings == {"temperature": 0.5}
    assert [x.id for x in s.list_conversations("100%")] == [c.id]
    assert s.list_conversations("nothing") == []
    assert [x.id for x in s.list_conversations("bubble")] == [c.id]
    s.rename(c.id, "Sorting")
    assert s.get_conversation(c.id).title == "Sorting"
    assert s.recent_prompts() == ["sort 100% of it"]
    md = s.export_markdown(c.id)
    assert "# Sorting" in md and "sort 100% of it" in md and "stopped" in md and "FTL 0.500 s" in md
    d = json.loads(s.export_json(c.id))
    assert d["messages"][1]["stats"]["stop_reason"] == "cancelled" and d["system"] == "be brief"
    s.delete_conversation(c.id)
    assert s.list_conversations() == [] and s.messages(c.id) == []
    s.close()
    # WAL mode on disk
    assert sqlite3.connect(str(tmp_path / "chats.db")).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_location_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TPUCHAT_DATA", str(tmp_path / "d"))
    s = Store()
    assert s.path == tmp_path / "d" / "chats.db" and s.path.exists()


def test_config_roundtrip(tmp_path):
    p = tmp_path / "c.toml"
    s = cfg.Settings(system_prompt='say "hi"\nthen stop', model_dirs=["~/models", "/data"], sample=True,
                     temperature=0.3, top_k=40, seed=7)
    cfg.save(s, p)
    back = cfg.load(p)
    assert back == s


def test_config_bad_values_fall_back(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[generation]\ntemperature = "hot"\ntop_k = 5\nunknown = 1\n[chat]\nsystem_prompt = "x"\n')
    s = cfg.load(p)
    assert s.temperature == cfg.Settings().temperature and s.top_k == 5 and s.system_prompt == "x"
    assert cfg.load(tmp_path / "missing.toml") == cfg.Settings()
    p.write_text("not toml [[[")
    assert cfg.load(p) == cfg.Settings()


def test_coerce_and_validate():
    assert cfg.coerce("sample", "on") is True and cfg.coerce("sample", "greedy") is False
    assert cfg.coerce("top_k", "40") == 40 and cfg.coerce("temperature", "1") == 1.0
    for name, value in (("top_k", "x"), ("temperature", "hot"), ("sample", "maybe")):
        try:
            cfg.coerce(name, value)
        except ValueError as e:
            assert name in str(e)
        else:
            raise AssertionError
    assert cfg.validate(cfg.Settings(top_p=2)) and cfg.validate(cfg.Settings()) is None


def test_cli_falls_back_to_plain_without_a_terminal(monkeypatch):
    from tpuchat import cli

    assert cli._use_tui(plain=True) is False
    # under pytest stdout is captured: not a terminal
    assert cli._use_tui(plain=False) is False


def test_ssh_tuning(monkeypatch):
    import importlib

    import tpuchat.tui as tui

    monkeypatch.setenv("SSH_CONNECTION", "1.2.3.4 5 6.7.8.9 22")
    monkeypatch.delenv("TEXTUAL_FPS", raising=False)
    monkeypatch.delenv("TEXTUAL_ANIMATIONS", raising=False)
    importlib.reload(tui)
    import os

    assert os.environ["TEXTUAL_FPS"] == "15" and os.environ["TEXTUAL_ANIMATIONS"] == "none"


def test_answer_footer_says_how_much_of_the_prompt_was_cached():
    from tpuchat.tui.widgets import fmt_stats

    st = {"ftl_s": 2.0, "tokens_per_s": 1.5, "new_tokens": 16, "prompt_tokens": 157, "reused_tokens": 138,
          "stop_reason": "eos"}
    assert "138/157 prompt tokens cached" in fmt_stats(st)
    assert "cached" not in fmt_stats(dict(st, reused_tokens=0))
