"""The engine boundary's records (runtime/protocol.py), the one stats wording
(chat/statsline.py) and the store's schema versions: no device, no Textual."""

import dataclasses
import pickle
import sqlite3

import pytest

from tpuchat.chat.statsline import format_stats, stats_parts
from tpuchat.runtime import protocol as P
from tpuchat.runtime.protocol import GenerationStats, ModelDesc
from tpuchat.tui.fake import fake_desc


def test_model_desc_round_trips_through_the_pipe_and_json():
    d = fake_desc(vision=True)
    d.family = {"members": [], "active": d.path}
    back = pickle.loads(pickle.dumps(P.Opened(d))).desc
    assert back == d and back.runtime.kind == "fake" and back.devices[0].mem_total_mb == 12288
    as_json = d.to_dict()
    assert as_json["can_sample"] is False and as_json["runtime"]["kind"] == "fake"
    assert ModelDesc.from_dict(as_json) == d


@pytest.mark.parametrize("lm_head,heads,expect", [
    ("top1", [], False),
    ("top1", ["greedy_head"], False),  # a greedy head on the host side does not sample
    ("logits", ["greedy_head"], True),
    ("logits", ["sample_head"], True),
    ("top1", ["penalty_sample_head"], False),  # no such build: the shim would refuse to sample
])
def test_can_sample_is_one_rule(lm_head, heads, expect):
    d = dataclasses.replace(fake_desc(), lm_head=lm_head, heads=heads)
    assert d.can_sample is expect and P.can_sample(d) is expect
    assert P.can_sample(None) is False


def test_failed_event_raises_the_named_error():
    from tpuchat.errors import PromptTooLong, TpuchatError

    assert isinstance(P.Failed("PromptTooLong", "too long").exception(), PromptTooLong)
    e = P.Failed("NoSuchError", "odd").exception()
    assert type(e) is TpuchatError and str(e) == "odd"


def test_stats_partial_knows_only_what_it_was_given():
    st = GenerationStats.partial(ftl_s=0.5)
    assert st.ftl_s == 0.5 and st.tokens_per_s is None and st.stop_reason is None
    assert GenerationStats.from_dict({"new_tokens": 3, "unknown_key": 1}).new_tokens == 3


FULL = GenerationStats(prompt_tokens=157, new_tokens=16, ftl_s=2.0, tokens_per_s=1.5, device_ms_per_token=600.0,
                       host_us_per_token=55.0, reused_tokens=138, stop_reason="eos")


def test_every_front_end_words_the_same_stats():
    assert format_stats(FULL, "footer") == "FTL 2.00 s · 138/157 prompt tokens cached · 1.5 tok/s · 16 tokens"
    assert format_stats(FULL, "plain") == "FTL 2.000 s (138 of 157 prompt tokens cached) | TPS 1.50 tokens/s"
    assert format_stats(FULL, "run") == ("FTL 2.000 s | TPS 1.50 tokens/s | 157 prompt + 16 new tokens (eos) | "
                                         "device 600.0 ms/token | host 55 µs/token")
    assert format_stats(dataclasses.replace(FULL, vit_s=4.25), "run").startswith(
        "vit 4.250 s (image encoder, before the prompt) | FTL 2.000 s")
    assert format_stats(FULL, "markdown", stopped=True) == "FTL 2.000 s · 1.50 tokens/s · 16 tokens · stopped"
    assert stats_parts(FULL, "status") == ["FTL 2.00s", "1.5 tok/s"]
    assert stats_parts(GenerationStats.partial(), "status") == []


def test_lookup_figures_show_only_when_lookup_ran():
    looked = dataclasses.replace(FULL, lookup_chunks=6, lookup_drafted=20, lookup_accepted=14, passes_per_token=0.45)
    assert format_stats(looked, "run").endswith(
        "| host 55 µs/token | lookup 6 chunks, 14/20 drafted accepted, 0.45 passes/token")
    assert format_stats(looked, "plain").endswith("TPS 1.50 tokens/s | lookup 0.45 passes/token")
    plain = dataclasses.replace(FULL, passes_per_token=1.0)
    assert "lookup" not in format_stats(plain, "run") + format_stats(plain, "plain")
    assert "lookup" not in format_stats(GenerationStats.partial(ftl_s=1.0, tokens_per_s=2.0), "plain")


@pytest.mark.parametrize("reason,plain,footer", [
    ("cancelled", " (stopped)", "[b yellow]stopped[/]"),
    ("context_full", " (context full: /clear to start over)", "[b yellow]context full[/] (/clear to start over)"),
    ("max_tokens", " (max tokens)", "max tokens"),
])
def test_stop_reasons_read_the_same_way(reason, plain, footer):
    st = dataclasses.replace(FULL, stop_reason=reason, reused_tokens=0)
    assert format_stats(st, "plain").endswith(plain)
    assert format_stats(st, "footer").endswith(footer)


# -- the store's schema versions ---------------------------------------------------------------------

V0_SCHEMA = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL DEFAULT '', system TEXT,
    model TEXT, settings TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    conv_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '', stopped INTEGER NOT NULL DEFAULT 0, error TEXT, model TEXT, ftl_s REAL,
    tokens_per_s REAL, new_tokens INTEGER, prompt_tokens INTEGER, stop_reason TEXT, created REAL NOT NULL);
"""


def test_a_database_from_before_versions_opens_and_migrates(tmp_path):
    """A chats.db written by the first release (no user_version, no attachments table) keeps its
    conversations and gains the attachments table."""
    from tpuchat.store import SCHEMA_VERSION, Store

    path = tmp_path / "chats.db"
    db = sqlite3.connect(str(path))
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO conversations(title, created, updated) VALUES ('old one', 1, 1)")
    db.execute("INSERT INTO messages(conv_id, role, content, ftl_s, new_tokens, created) "
               "VALUES (1, 'assistant', 'kept', 0.25, 7, 1)")
    db.commit()
    db.close()
    s = Store(path)
    assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    (m,) = s.messages(1)
    assert m.content == "kept" and m.stats.ftl_s == 0.25 and m.stats.new_tokens == 7 and m.stats.tokens_per_s is None
    s.add_attachment(m.id, "/tmp/x.png", "abc", "x.png")
    assert s.messages(1)[0].attachments[0].digest == "abc"
    s._db.close()
    assert Store(path).messages(1)[0].attachments[0].name == "x.png"  # opening again migrates nothing


def test_a_database_from_a_newer_tpuchat_is_refused_in_one_line(tmp_path):
    from tpuchat.errors import TpuchatError
    from tpuchat.store import Store

    path = tmp_path / "chats.db"
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(TpuchatError, match="newer tpuchat"):
        Store(path)
