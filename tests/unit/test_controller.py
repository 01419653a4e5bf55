"""The conversation controller without any UI: what is stored when, taken back on refuse,
retry and edit, exported, and the live figures (the scripted FakeModel; no Textual, no device)."""

import json
import subprocess
import sys

import pytest

from tpuchat import config as cfg
from tpuchat.chat.controller import ConversationController
from tpuchat.chat.session import Delta, Finished
from tpuchat.errors import EngineCrashed, PromptTooLong
from tpuchat.store import Store
from tpuchat.tui.fake import FakeModel


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "chats.db")


def make(store, **kw):
    model = FakeModel(rate=0, prefill_s=0, **kw)
    return ConversationController(store, cfg.Settings(max_new_tokens=64), model), model


def ask(ctl, text, image=None):
    ctl.begin(text, image)
    return list(ctl.answer(text, image))


def test_an_answer_is_stored_with_its_stats_and_the_buffer_holds_its_text(store):
    ctl, model = make(store, answer="Four.")
    events = ask(ctl, "What is 2+2?")
    fin = events[-1]
    assert isinstance(fin, Finished) and fin.text == "Four."
    (conv,) = store.list_conversations()
    assert conv.title == "What is 2+2?" and conv.model == model.name
    user, answer = store.messages(conv.id)
    assert (user.role, user.content) == ("user", "What is 2+2?")
    assert answer.content == "Four." and not answer.stopped and answer.stats.new_tokens == fin.stats.new_tokens
    assert ctl.buffer.take() == "Four." and ctl.buffer.take() == ""
    assert ctl.result.text == "Four." and not ctl.result.stopped and ctl.result.error is None
    assert ctl.last_stats is fin.stats and ctl.context_used() == fin.stats.prompt_tokens + fin.stats.new_tokens
    assert not ctl.generating


def test_the_answer_row_exists_while_streaming(store):
    ctl, _ = make(store, answer="one two three four")
    ctl.begin("go")
    stream = ctl.answer("go")
    assert isinstance(next(stream), Delta)
    rows = store.messages(ctl.conv_id)
    assert [m.role for m in rows] == ["user", "assistant"] and rows[1].stopped  # saved before the end
    assert ctl.generating and ctl.live_stats().new_tokens == 1
    list(stream)
    assert not store.messages(ctl.conv_id)[1].stopped


def test_a_refused_message_is_taken_back_out_of_store_and_conversation(store):
    ctl, _ = make(store, max_prompt_chars=10)
    ask(ctl, "short")
    with pytest.raises(PromptTooLong):
        ask(ctl, "a message far too long for this model")
    assert [m.content for m in store.messages(ctl.conv_id)][-1] != ""
    assert [m.role for m in store.messages(ctl.conv_id)] == ["user", "assistant"]
    assert [m.content for m in ctl.conv.messages][0] == "short" and len(ctl.conv.messages) == 2
    assert not ctl.generating


def test_a_crash_keeps_what_was_produced_with_the_error(store):
    ctl, _ = make(store, answer="one two three four five", crash_after=2)
    with pytest.raises(EngineCrashed):
        ask(ctl, "go")
    answer = store.messages(ctl.conv_id)[-1]
    assert answer.content == "one two" and answer.stopped and "SIGSEGV" in answer.error
    assert answer.stats.stop_reason == "failed" and answer.stats.new_tokens == 2
    assert ctl.result.error == answer.error and ctl.result.text == "one two"


def test_retry_drops_the_answer_and_answers_the_same_message_again(store):
    ctl, model = make(store, answers=["first", "second"])
    ask(ctl, "q")
    text, image = ctl.take_back_answer()
    assert (text, image) == ("q", None) and ctl.conv.messages == []
    assert [m.role for m in store.messages(ctl.conv_id)] == ["user"]  # the message stays stored
    ctl.begin(text, image, retry=True)
    list(ctl.answer(text, image))
    assert [(m.role, m.content) for m in store.messages(ctl.conv_id)] == [("user", "q"), ("assistant", "second")]
    assert ctl.take_back_answer() is not None and ctl.take_back_answer() is None  # nothing left to retry


def test_edit_takes_the_last_message_and_what_followed_back(store):
    ctl, _ = make(store, answers=["a1", "a2"])
    ask(ctl, "q1")
    ask(ctl, "q2")
    assert ctl.take_back_last_message() == ("q2", None, 2)
    assert [m.content for m in store.messages(ctl.conv_id)] == ["q1", "a1"]
    assert [m.content for m in ctl.conv.messages] == ["q1", "a1"]


def test_stop_keeps_the_partial_answer_marked_stopped(store):
    ctl, model = make(store, answer="one two three four five six")
    ctl.begin("go")
    for ev in ctl.answer("go"):
        if isinstance(ev, Delta) and ev.text.strip() == "two":
            ctl.cancel()
    answer = store.messages(ctl.conv_id)[-1]
    assert answer.stopped and answer.stats.stop_reason == "cancelled" and answer.content.startswith("one two")
    assert ctl.result.stopped


def test_settings_set_and_system_prompt_are_per_conversation(store, tmp_path):
    ctl, model = make(store)
    ask(ctl, "hi")
    ctl.set_system("Be terse.")
    s = ctl.parse_set("sample=on temperature=0.5 top-k=40")
    assert ctl.apply_settings(s, "conversation") == "Settings applied to this conversation"
    c = store.get_conversation(ctl.conv_id)
    assert c.system == "Be terse." and c.settings["temperature"] == 0.5 and c.settings["top_k"] == 40
    g = ctl.gen_settings()
    assert g.sample and g.temperature == 0.5 and g.max_new_tokens == 64
    with pytest.raises(ValueError, match="top_p must be in"):
        ctl.parse_set("top_p=2")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ctl.parse_set("nonsense")
    msg = ctl.apply_settings(s, "default", tmp_path / "config.toml")
    assert msg.startswith("Saved as default in") and cfg.load(tmp_path / "config.toml").temperature == 0.5
    ctl.new_conversation()
    # the default now includes the system prompt it was saved with
    assert ctl.conv_id is None and ctl.conv.system == "Be terse." and ctl.gen_settings().temperature == 0.5


def test_export_writes_markdown_and_json(store, tmp_path):
    ctl, _ = make(store, answer="Sorted.")
    ask(ctl, "Sort this")
    written = ctl.export("", cwd=str(tmp_path))
    assert sorted(p.rsplit(".", 1)[1] for p in written) == ["json", "md"]
    md = next(p for p in written if p.endswith(".md"))
    assert "Sort this" in open(md).read() and "Sorted." in open(md).read()
    (only,) = ctl.export(f"json {tmp_path / 'out.json'}")
    assert json.load(open(only))["messages"][1]["content"] == "Sorted."


def test_reopening_a_conversation_restores_it(store):
    ctl, _ = make(store, answer="Yes.")
    ask(ctl, "Still there?")
    conv_id = ctl.conv_id
    ctl.new_conversation()
    pairs = ctl.open_conversation(conv_id)
    assert [(s.role, m.content) for s, m in pairs] == [("user", "Still there?"), ("assistant", "Yes.")]
    assert ctl.context_used() > 0 and ctl.open_conversation(9999) is None


def test_without_a_store_nothing_is_saved():
    ctl = ConversationController(None, cfg.Settings(max_new_tokens=8), FakeModel(rate=0, prefill_s=0, answer="ok"))
    ask(ctl, "hi")
    assert ctl.conv_id is None and ctl.last_answer() == "ok"


def test_the_controller_needs_no_textual():
    code = ("import sys, tpuchat.chat.controller, tpuchat.chat.plain; "
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
