"""What a streamed answer looks like on screen, against the same text shown at once: the streaming
widget (cached rows, only changed rows repainted), finished answers drawn from their painted rows
(frozen.py), and following the answer unless the user scrolled up."""

import asyncio

from textual.app import App
from textual.containers import VerticalScroll
from textual.widgets import Markdown

from tpuchat.tui.fake import FakeModel, split_tokens
from tpuchat.tui.markdown_stream import StreamingMarkdown
from tpuchat.tui.widgets import MessageBox

ANSWER = ("# Sorting\n\nHere is a **bubble sort** with `xs` in Python, and a list:\n\n- first item\n"
          "- second item that is long enough to wrap on a narrow terminal, more words here\n\n"
          "```python\ndef f(xs):\n    return sorted(xs)\n```\n\n"
          + "".join(" word%d" % i for i in range(120)) + "\n\n## After\n\nlast *words* here")


def screen_rows(app, widget=None):
    """What the screen shows (of `widget`'s region): each cell's character and colours/attributes."""
    strips = app.screen._compositor.render_strips()
    if widget is not None:
        r = widget.region
        strips = [strip.crop(r.x, r.right) for strip in strips[r.y:r.bottom]]
    return [[(ch, _look(ch, seg.style)) for seg in strip for ch in seg.text] for strip in strips]


def _look(ch, style):
    """What a cell looks like: a blank shows its background (and lines through or under it) only;
    Textual's click/offset metadata is not seen at all."""
    if style is None:
        return None
    if ch == " ":
        return None, style.bgcolor, None, None, style.underline, style.strike, style.reverse, None
    return style.color, style.bgcolor, style.bold, style.italic, style.underline, style.strike, style.reverse, \
        style.dim


def widget_rows(app, widget):
    region = widget.region
    strips = app.screen._compositor.render_strips()[region.y:region.bottom]
    return [strip.crop(region.x, region.right).text for strip in strips]


class OneWidget(App):
    CSS = "VerticalScroll { height: 1fr; }"

    def __init__(self, text=""):
        super().__init__()
        self.initial = text

    def compose(self):
        with VerticalScroll():
            yield StreamingMarkdown(self.initial)


def test_streamed_in_pieces_shows_what_the_whole_text_shows():
    """Rows kept from earlier ticks and rows repainted must add up to the text rendered at once."""
    shown = {}

    async def run(key, pieces):
        app = OneWidget()
        async with app.run_test(size=(60, 80)) as pilot:
            md = app.query_one(StreamingMarkdown)
            for piece in pieces:
                await md.append(piece)
                await pilot.pause(0)  # a frame now and then, as the UI's ticks give
            await pilot.pause(0.1)
            shown[key] = screen_rows(app)
            assert md.text == ANSWER

    tokens = split_tokens(ANSWER)
    asyncio.run(run("at once", [ANSWER]))
    asyncio.run(run("streamed", ["".join(tokens[i:i + 3]) for i in range(0, len(tokens), 3)]))
    assert shown["streamed"] == shown["at once"]
    assert any("word119" in "".join(ch for ch, _ in row) for row in shown["at once"])


async def _send(pilot, text):
    app = pilot.app
    n = len(app.session.conv.messages) if app.session else 0
    app.prompt.load_text(text)
    await pilot.press("enter")
    while app.generating or len(app.session.conv.messages) < n + 2:
        await pilot.pause(0.05)


async def _answer(pilot):
    """Once the model is open, send "go" and return the finished answer's box."""
    app = pilot.app
    while app.model is None:
        await pilot.pause(0.05)
    await _send(pilot, "go")
    return [b for b in app.query(MessageBox) if b.role == "assistant"][-1]


async def _frozen(pilot, box):
    """The answer's FrozenRows once it is on screen and the view has stopped scrolling to it
    (before that, its visible region moves and the mouse may miss it)."""
    last = None
    for _ in range(100):
        frozen = box.frozen
        region = frozen.region if frozen is not None else None
        if region is not None and region.height > 0 and region == last:
            return frozen
        last = region
        await pilot.pause(0.05)
    raise AssertionError("the finished answer was not frozen")


def test_finished_answer_drawn_from_rows_looks_like_the_live_markdown(app_factory, monkeypatch):
    app = app_factory(model=FakeModel(answer=ANSWER, rate=400, prefill_s=0))

    async def run():
        async with app.run_test(size=(90, 60)) as pilot:
            box = await _answer(pilot)
            frozen = await _frozen(pilot, box)
            md = box.body
            assert isinstance(md, Markdown) and md.source == ANSWER and not md.display
            assert [b for b in app.query(MessageBox) if b.role == "user"][-1].frozen is not None
            await pilot.pause(0.1)
            as_frozen = screen_rows(app, app.chat)  # (the input's cursor blinks)
            monkeypatch.setattr(MessageBox, "_freeze", lambda self: None)  # stay live once thawed
            for b in app.query(MessageBox):
                b.thaw()
            while box.frozen is not None or not md.display:
                await pilot.pause(0.05)
            await pilot.pause(0.1)
            assert screen_rows(app, app.chat) == as_frozen
            assert any("word119" in "".join(ch for ch, _ in row) for row in as_frozen)

    asyncio.run(run())


def test_streamed_answer_ends_as_the_same_answer_reopened_from_the_store(app_factory):
    app = app_factory(model=FakeModel(answer=ANSWER, rate=300, prefill_s=0))

    async def run():
        async with app.run_test(size=(90, 60)) as pilot:
            box = await _answer(pilot)
            await _frozen(pilot, box)
            streamed = widget_rows(app, box)
            await app.open_conversation(app.conv_id)  # rendered at once from the store
            box = [b for b in app.query(MessageBox) if b.role == "assistant"][-1]
            await _frozen(pilot, box)
            await pilot.pause(0.1)
            assert widget_rows(app, box) == streamed
            assert any("word119" in row for row in streamed)

    asyncio.run(run())


def test_a_resized_terminal_shows_finished_answers_at_the_new_width(app_factory):
    app = app_factory(model=FakeModel(answer=ANSWER, rate=0, prefill_s=0))

    async def run():
        async with app.run_test(size=(90, 60)) as pilot:
            box = await _answer(pilot)
            old = await _frozen(pilot, box)
            await pilot.resize_terminal(70, 60)
            for _ in range(100):
                if box.frozen is not None and box.frozen is not old:
                    break
                await pilot.pause(0.05)
            frozen = box.frozen
            assert frozen is not None and frozen is not old, "captured again at the new width"
            assert frozen.captured_width == frozen.size.width < old.captured_width
            assert all(len(row.rstrip()) <= frozen.size.width for row in widget_rows(app, frozen))
            assert any("word119" in row for row in widget_rows(app, box))

    asyncio.run(run())


def test_view_follows_the_answer_until_the_user_scrolls_up(app_factory):
    long_answer = "".join("line %d of the answer\n\n" % i for i in range(150))
    model = FakeModel(answer=long_answer, rate=150, prefill_s=0)
    app = app_factory(model=model)

    async def run():
        async with app.run_test(size=(80, 24)) as pilot:
            while app.model is None:
                await pilot.pause(0.05)
            app.prompt.load_text("go")
            await pilot.press("enter")
            chat = app.chat
            while chat.max_scroll_y < 10:
                await pilot.pause(0.05)
            assert chat.scroll_y == chat.max_scroll_y, "follows the growing answer"
            for _ in range(5):
                chat.scroll_up(animate=False)  # as the mouse wheel does
            await pilot.pause(0.1)
            held, bottom = chat.scroll_y, chat.max_scroll_y
            assert held < bottom
            while chat.max_scroll_y < bottom + 5:
                await pilot.pause(0.05)
            assert chat.scroll_y == held, "does not jump back down while the user reads above"
            chat.scroll_end(animate=False)  # back at the bottom: following again
            await pilot.pause(0.1)
            bottom = chat.max_scroll_y
            while app.generating and chat.max_scroll_y < bottom + 5:
                await pilot.pause(0.05)
            await pilot.pause(0.1)
            assert chat.scroll_y == chat.max_scroll_y
            while app.generating:
                await pilot.pause(0.05)

    asyncio.run(run())


def test_the_mouse_gets_the_live_message(app_factory):
    """Links, wide code blocks and selection need the real widgets: hovering a frozen message
    brings them back."""
    app = app_factory(model=FakeModel(answer=ANSWER, rate=0, prefill_s=0))

    async def run():
        async with app.run_test(size=(90, 60)) as pilot:
            box = await _answer(pilot)
            frozen = await _frozen(pilot, box)
            await pilot.hover(frozen, offset=(2, 0))  # (its top visible row)
            for _ in range(40):
                if box.frozen is None and box.body.display:
                    break
                await pilot.pause(0.05)
            assert box.frozen is None and box.body.display

    asyncio.run(run())


def test_a_freeze_that_comes_after_the_message_is_emptied_does_nothing(app_factory):
    """A new conversation clears the chat: a box's children go first, and a freeze queued after a
    refresh can still run on it. That raised NoMatches and ended the app (CI saw it in
    test_sidebar_hidden_at_80x24_and_toggles)."""
    app = app_factory(model=FakeModel(answer=ANSWER, rate=0, prefill_s=0))

    async def run():
        async with app.run_test(size=(90, 60)) as pilot:
            box = await _answer(pilot)
            box.thaw()
            await box.remove_children()
            box._freeze()
            await pilot.pause(0.1)
            assert box.frozen is None and app.is_running

    asyncio.run(run())
