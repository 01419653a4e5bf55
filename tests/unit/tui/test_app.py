"""Pilot tests of the chat UI over the scripted FakeModel (no device, no simulator)."""

import asyncio
import json

import pytest

from tpuchat.errors import ModelError
from tpuchat.tui.app import TpuchatApp
from tpuchat.tui.backend import FakeBackend
from tpuchat.tui.fake import FakeModel
from tpuchat.tui.widgets import MessageBox

pytestmark = pytest.mark.timeout(60)


def sync(fn):
    """Run an async test with asyncio.run (no pytest async plugin needed)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        return asyncio.run(fn(*a, **kw))

    return wrapper


async def wait_for(pilot, cond, timeout=20.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not met in time")


async def ready(pilot, app: TpuchatApp):
    await wait_for(pilot, lambda: app.model is not None and app.state == "idle")


async def type_and_send(pilot, text: str):
    app = pilot.app
    app.prompt.load_text(text)
    await pilot.press("enter")


def boxes(app, role=None):
    return [b for b in app.query(MessageBox) if role is None or b.role == role]


@sync
async def test_send_streams_answer_with_stats(app_factory):
    model = FakeModel(rate=12)
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.pause(0.1)
        welcome = app.query("#welcome")  # the empty chat says the model is ready
        assert len(welcome) == 1 and "is ready" in str(welcome.first().render())
        await pilot.press(*"hi there")
        await pilot.press("enter")
        assert app.prompt.text == ""
        # mid-stream: partial answer on screen, state and live stats in the status bar
        await wait_for(pilot, lambda: app.state == "generating" and len(boxes(app, "assistant")[0].text) > 10)
        status = str(app.query_one("#status").render())
        assert "generating" in status and "tok/s" in status and "FTL" in status
        assert app.generating
        await wait_for(pilot, lambda: not app.generating)
        box = boxes(app, "assistant")[0]
        assert "bubble_sort" in box.text
        footer = str(box.query_one(".msg-footer").render())
        assert "FTL" in footer and "tok/s" in footer and "57 tokens" in footer
        assert app.state == "idle"
        assert "ctx " in str(app.query_one("#status").render())
        # persisted: user message, answer with stats and model
        msgs = app.store.messages(app.conv_id)
        assert [m.role for m in msgs] == ["user", "assistant"]
        assert msgs[0].content == "hi there"
        assert msgs[1].content == box.text and not msgs[1].stopped
        assert msgs[1].stats.new_tokens == 57 and msgs[1].stats.tokens_per_s > 0
        assert msgs[1].model == model.name
        assert app.store.list_conversations()[0].title == "hi there"


@sync
async def test_updates_are_batched(app_factory):
    """Many tokens, few screen updates: the answer's Markdown is appended per drain tick, not per token."""
    model = FakeModel(answer="word " * 300, rate=400, prefill_s=0)
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        calls = []
        orig = MessageBox.append_text

        async def counting(self, chunk):
            calls.append(chunk)
            await orig(self, chunk)

        MessageBox.append_text = counting
        try:
            await type_and_send(pilot, "go")
            await wait_for(pilot, lambda: not app.generating)
        finally:
            MessageBox.append_text = orig
        assert 1 <= len(calls) < 100  # 300 tokens in ~0.75 s at 15 Hz
        assert "".join(calls).strip() == ("word " * 300).strip()


@sync
async def test_escape_stops_and_keeps_partial(app_factory):
    model = FakeModel(rate=20)
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await type_and_send(pilot, "tell me")
        await wait_for(pilot, lambda: app.ctl.buffer.tokens >= 3)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating)
        ans = app.session.conv.messages[-1]
        assert ans.role == "assistant" and ans.stopped and 0 < len(ans.content) < len(model.answer)
        box = boxes(app, "assistant")[0]
        assert "stopped" in str(box.query_one(".msg-footer").render())
        stored = app.store.messages(app.conv_id)[-1]
        assert stored.stopped and stored.content == ans.content and stored.stats.stop_reason == "cancelled"
        # the conversation goes on
        await type_and_send(pilot, "again")
        await wait_for(pilot, lambda: not app.generating and len(app.session.conv.messages) == 4)


@sync
async def test_too_long_message_is_given_back(app_factory):
    model = FakeModel(max_prompt_chars=20)
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        long = "this message is much too long for the model"
        await type_and_send(pilot, long)
        await wait_for(pilot, lambda: boxes(app, "error"))
        assert app.prompt.text == long
        assert not boxes(app, "user") and not boxes(app, "assistant")
        assert "too long" not in app.state
        assert "shorten it" in boxes(app, "error")[0].text
        assert app.session.conv.messages == []
        assert app.store.messages(app.conv_id) == []
        assert not app.generating and app.state == "idle"


@sync
async def test_crash_keeps_partial_and_shows_error(app_factory):
    model = FakeModel(rate=100, crash_after=5)
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await type_and_send(pilot, "crash please")
        await wait_for(pilot, lambda: not app.generating and boxes(app, "error"))
        err = boxes(app, "error")[0].text
        assert "SIGSEGV" in err and "restarts the engine" in err
        ans = app.session.conv.messages[-1]
        assert ans.stopped and ans.content  # partial kept
        stored = app.store.messages(app.conv_id)
        assert stored[0].content == "crash please"
        assert stored[1].stopped and stored[1].error and stored[1].content == ans.content
        # retry answers again (engine "restarted")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.generating and not app.session.conv.messages[-1].stopped)
        assert len(app.store.messages(app.conv_id)) == 2
        assert "bubble_sort" in app.store.messages(app.conv_id)[1].content


@sync
async def test_load_failure_keeps_app_and_input(app_factory):
    backend = FakeBackend(lambda p, d: FakeModel(), open_error=ModelError("/m/x.bmodel is truncated: copy it again"))
    app = app_factory(backend=backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: boxes(app, "error"))
        assert "truncated" in boxes(app, "error")[0].text and "F2" in boxes(app, "error")[0].text
        assert app.state == "error"
        await type_and_send(pilot, "my precious words")
        await pilot.pause(0.1)
        assert app.prompt.text == "my precious words"
        assert app.is_running
        # a working model afterwards: the same text can be sent
        backend.open_error = None
        app.open_model("/m/good.bmodel", [0])
        await ready(pilot, app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.session.conv.messages) == 2 and not app.generating)
        assert app.session.conv.messages[0].content == "my precious words"


@sync
async def test_history_recall_and_newline(app_factory):
    app = app_factory(model=FakeModel(rate=0, prefill_s=0))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        for t in ("first question", "second question"):
            await type_and_send(pilot, t)
            await wait_for(pilot, lambda: not app.generating)
        await pilot.press(*"dra")
        await pilot.press("up")
        assert app.prompt.text == "second question"
        await pilot.press("up")
        assert app.prompt.text == "first question"
        await pilot.press("down")
        assert app.prompt.text == "second question"
        await pilot.press("down")
        assert app.prompt.text == "dra"
        await pilot.press("ctrl+j", *"ft")
        assert app.prompt.text == "dra\nft"
        # Up on the second line moves the cursor, only the first line recalls
        await pilot.press("up")
        assert app.prompt.text == "dra\nft"


@sync
async def test_prompts_recalled_across_restarts(app_factory, tmp_path):
    from tpuchat.store import Store

    store = Store(tmp_path / "chats.db")
    c = store.new_conversation("old")
    store.add_message(c.id, "user", "from yesterday")
    app = app_factory(model=FakeModel(rate=0), store=store)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("up")
        assert app.prompt.text == "from yesterday"


@sync
async def test_slash_commands(app_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = FakeModel(rate=0, prefill_s=0)
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await type_and_send(pilot, "/set sample=on temperature=0.5 top_k=40 max_new_tokens=7")
        await type_and_send(pilot, "/system You are terse.")
        await type_and_send(pilot, "hello")
        await wait_for(pilot, lambda: not app.generating and model.settings_seen)
        s = model.settings_seen[-1]
        assert s.sample and s.temperature == 0.5 and s.top_k == 40 and s.max_new_tokens == 7
        assert app.session.conv.system == "You are terse."
        assert app.session.conv.messages[-1].content.count(" ") <= 7
        conv = app.store.get_conversation(app.conv_id)
        assert conv.settings["temperature"] == 0.5  # per-conversation, stored
        # bad /set value: an error, nothing changes
        await type_and_send(pilot, "/set temperature=hot")
        assert app.gen_settings().temperature == 0.5
        await type_and_send(pilot, "/export")
        md = list(tmp_path.glob("tpuchat-*.md"))
        js = list(tmp_path.glob("tpuchat-*.json"))
        assert md and js
        assert "## You" in md[0].read_text() and "hello" in md[0].read_text()
        data = json.loads(js[0].read_text())
        assert data["system"] == "You are terse." and data["messages"][1]["stats"]["new_tokens"] <= 7
        await type_and_send(pilot, "/help")
        await pilot.pause(0.1)
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        old = app.conv_id
        await type_and_send(pilot, "/new")
        await pilot.pause(0.1)
        assert app.conv_id is None and not boxes(app)
        assert app.session.conv.messages == []
        await type_and_send(pilot, "/bogus")
        assert app.prompt.text == "/bogus"
        assert app.store.get_conversation(old) is not None


@sync
async def test_sidebar_open_rename_delete(app_factory):
    app = app_factory(model=FakeModel(rate=0, prefill_s=0))
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot, app)
        assert app.query_one("#sidebar").display  # wide terminal: shown
        await type_and_send(pilot, "about cats")
        await wait_for(pilot, lambda: not app.generating)
        first = app.conv_id
        await pilot.press("ctrl+n")
        await type_and_send(pilot, "about dogs")
        await wait_for(pilot, lambda: not app.generating)
        titles = [c.title for c in app.store.list_conversations()]
        assert titles == ["about dogs", "about cats"]
        await app.open_conversation(first)
        await pilot.pause(0.1)
        assert [b.role for b in boxes(app)] == ["user", "assistant"]
        assert boxes(app)[0].text == "about cats"
        assert app.session.conv.messages[0].content == "about cats"
        # search
        app.query_one("#conv-search").value = "dogs"
        await wait_for(pilot, lambda: len(app.query("ConversationItem")) == 1)
        app.query_one("#conv-search").value = ""
        await wait_for(pilot, lambda: len(app.query("ConversationItem")) == 2)
        # rename the highlighted one from the list
        app.query_one("#conv-list").focus()
        await pilot.press("r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "TextPrompt")
        app.screen.query_one("Input").value = "Felines"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Felines" in [c.title for c in app.store.list_conversations()])
        app.query_one("#conv-list").focus()
        await pilot.press("d")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "Confirm")
        await pilot.press("y")
        await wait_for(pilot, lambda: len(app.store.list_conversations()) == 1)


@sync
async def test_sidebar_hidden_at_80x24_and_toggles(app_factory):
    app = app_factory(model=FakeModel())
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        assert not app.query_one("#sidebar").display
        await type_and_send(pilot, "remember me")
        await wait_for(pilot, lambda: not app.generating)
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert not boxes(app)
        await pilot.press("ctrl+b")
        assert app.query_one("#sidebar").display
        await pilot.pause(0.1)
        await pilot.press("enter")  # the newest conversation is highlighted: Enter opens it
        await wait_for(pilot, lambda: boxes(app) and boxes(app)[0].text == "remember me")
        await pilot.press("ctrl+b")
        assert not app.query_one("#sidebar").display


@sync
async def test_switch_model_keeps_conversation(app_factory):
    made = []

    def factory(path, devids):
        m = FakeModel(rate=0, prefill_s=0, name=path.rsplit("/", 1)[-1], devids=devids)
        made.append(m)
        return m

    app = app_factory(backend=FakeBackend(factory))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await type_and_send(pilot, "one")
        await wait_for(pilot, lambda: not app.generating)
        await type_and_send(pilot, "/model /m/other.bmodel")
        await wait_for(pilot, lambda: app.model is made[-1] and len(made) == 2)
        assert made[0].closed
        await type_and_send(pilot, "two")
        await wait_for(pilot, lambda: not app.generating and len(app.session.conv.messages) == 4)
        # the new model got the whole conversation (re-prefilled)
        assert len(made[1].requests[0]) > len(made[0].requests[0])
        assert app.store.get_conversation(app.conv_id).model == "other.bmodel"


@sync
async def test_retry_and_edit_last(app_factory):
    model = FakeModel(rate=0, prefill_s=0, answers=["first answer", "second answer"])
    app = app_factory(model=model)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await type_and_send(pilot, "q")
        await wait_for(pilot, lambda: not app.generating)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.generating and app.session.conv.messages[-1].content == "second answer")
        assert [b.text for b in boxes(app)] == ["q", "second answer"]
        assert [m.content for m in app.store.messages(app.conv_id)] == ["q", "second answer"]
        await pilot.press("ctrl+e")
        await pilot.pause(0.1)
        assert app.prompt.text == "q" and not boxes(app) and app.session.conv.messages == []
        assert app.store.messages(app.conv_id) == []


@sync
async def test_device_picker_checks_device_count(app_factory):
    from tpuchat.tui.fake import fake_desc

    def factory(path, devids):
        return FakeModel(desc=fake_desc(num_device=2, devids=devids), devids=devids)

    app = app_factory(backend=FakeBackend(factory), devids=[0, 1])
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("f3")
        await pilot.pause(0.2)
        picker = app.screen
        assert type(picker).__name__ == "DevicePicker"
        sl = picker.query_one("SelectionList")
        assert sorted(sl.selected) == [0, 1]
        sl.deselect(1)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert "compiled for 2" in str(picker.query_one("#device-msg").render())
        assert app.screen is picker
        sl.select(1)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.devids == [0, 1] and app.state == "idle")
        # a typed list with the wrong count is refused with a message
        await type_and_send(pilot, "/devices 3")
        await pilot.pause(0.1)
        assert app.devids == [0, 1]


@sync
async def test_settings_screen_saves_default(app_factory, tmp_path):
    from tpuchat import config as cfg

    app = app_factory(model=FakeModel(rate=0))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("f4")
        await pilot.pause(0.1)
        scr = app.screen
        scr.query_one("#set-temperature").value = "0.3"
        scr.query_one("#set-system").load_text("Be brief.")
        scr.query_one("#set-sample").value = True
        scr.query_one("#default").press()
        await pilot.pause(0.2)
        assert app.screen is not scr
        saved = cfg.load(tmp_path / "config.toml")
        assert saved.temperature == 0.3 and saved.sample and saved.system_prompt == "Be brief."
        assert app.session.conv.system == "Be brief."
        # invalid values are refused on the screen
        await pilot.press("f4")
        await pilot.pause(0.1)
        scr = app.screen
        scr.query_one("#set-top_p").value = "7"
        scr.query_one("#conversation").press()
        await pilot.pause(0.1)
        assert app.screen is scr and "top_p" in str(scr.query_one("#settings-error").render())


@sync
async def test_model_picker_lists_bmodels(app_factory, tmp_path):
    (tmp_path / "a.bmodel").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bmodel").write_bytes(b"x")
    app = app_factory(model=FakeModel(rate=0), model_dirs=[str(tmp_path)])
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("f2")
        await pilot.pause(0.3)
        scr = app.screen
        assert type(scr).__name__ == "ModelPicker"
        assert {p.rsplit("/", 1)[-1] for p in scr.paths} >= {"a.bmodel", "b.bmodel"}
        assert "quantisation" in str(scr.query_one("#model-facts").render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.model_path.endswith(".bmodel") and app.state == "idle" and
                       app.backend.opened[-1][0] == scr.paths[0])


@sync
async def test_a_send_reorders_the_sidebar_without_mounting_its_rows_again(app_factory):
    from textual.widgets import Label

    from tpuchat.tui.widgets import ConversationItem

    app = app_factory(model=FakeModel(rate=0, prefill_s=0))
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot, app)
        for text in ("older chat", "newer chat"):
            await pilot.press("ctrl+n")
            await type_and_send(pilot, text)
            await wait_for(pilot, lambda: not app.generating)
        rows = list(app.query(ConversationItem))
        assert [r.shown[0] for r in rows][:2] == ["newer chat", "older chat"]
        await app.open_conversation(rows[1].conv_id)
        await type_and_send(pilot, "again")
        await wait_for(pilot, lambda: not app.generating)
        await pilot.pause(0.1)
        assert list(app.query(ConversationItem)) == rows  # the same widgets, relabelled
        assert [r.shown[0] for r in rows][:2] == ["older chat", "newer chat"]
        assert [str(l.render()) for l in rows[0].query(Label)][0] == "older chat"


@sync
async def test_up_brings_back_a_slash_command(app_factory):
    app = app_factory(model=FakeModel(rate=0, prefill_s=0))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await type_and_send(pilot, "/system be brief")
        await pilot.pause(0.1)
        assert app.prompt.text == ""
        await pilot.press("up")
        assert app.prompt.text == "/system be brief"
