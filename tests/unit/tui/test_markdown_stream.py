"""The streamed answer's split into finished blocks and a live tail (tpuchat/tui/markdown_stream.py)."""

import asyncio

from tpuchat.tui.markdown_stream import finished_prefix


def test_nothing_is_finished_before_the_next_block_starts():
    assert finished_prefix("") == 0
    assert finished_prefix("one paragraph") == 0
    assert finished_prefix("one paragraph\n\n") == 0  # the next block may still be a continuation


def test_blocks_before_a_new_block_are_finished():
    text = "# Title\n\nfirst para\n\nsecond"
    assert text[: finished_prefix(text)] == "# Title\n\nfirst para\n\n"


def test_code_fence_is_one_block_even_with_blank_lines():
    text = "intro\n\n```python\nx = 1\n\ny = 2\n"
    assert text[: finished_prefix(text)] == "intro\n\n"  # the fence is still open
    closed = text + "```\n\nafter"
    assert closed[: finished_prefix(closed)] == text + "```\n\n"


def test_indented_line_may_continue_a_list_item():
    text = "- item\n\n  more of the item"
    assert finished_prefix(text) == 0


def test_streamed_answer_ends_as_one_markdown_document(app_factory, monkeypatch):
    from textual.widgets import Markdown

    from tpuchat.tui.fake import FakeModel
    from tpuchat.tui.markdown_stream import StreamingMarkdown
    from tpuchat.tui.widgets import MessageBox

    answer = "# Head\n\npara one\n\n- a\n- b\n\n```\ncode\n```\n\nlast words"
    app = app_factory(model=FakeModel(answer=answer, rate=30, prefill_s=0))
    streamed = []
    orig_append = StreamingMarkdown.append

    async def append(self, chunk):
        streamed.append(chunk)
        await orig_append(self, chunk)

    monkeypatch.setattr(StreamingMarkdown, "append", append)

    async def run():
        async with app.run_test(size=(80, 40)) as pilot:
            while app.model is None:
                await pilot.pause(0.05)
            app.prompt.load_text("go")
            await pilot.press("enter")
            while app.generating or len(app.session.conv.messages) < 2:
                await pilot.pause(0.05)
            box = [b for b in app.query(MessageBox) if b.role == "assistant"][-1]
            for _ in range(100):  # the final Markdown is mounted on the next refreshes
                if not list(box.query(StreamingMarkdown)):
                    break
                await pilot.pause(0.05)
            assert "".join(streamed) == answer, "the answer streamed through a StreamingMarkdown"
            assert not list(box.query(StreamingMarkdown))
            md = box.query_one(".msg-body", Markdown)
            assert md.source == answer == box.text

    asyncio.run(run())


def test_reused_parser_renders_as_rich_does():
    import io
    import re
    from pathlib import Path

    from rich.console import Console
    from rich.markdown import Markdown

    from tpuchat.tui.markdown_stream import rich_markdown

    def render(md):
        console = Console(width=80, file=io.StringIO(), color_system="truecolor", force_terminal=True)
        console.print(md)
        return re.sub(r"id=\d+", "id=", console.file.getvalue())  # link ids are random

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()  # tables, code, lists, links
    for text in (readme, "~~gone~~ and **bold**\n\n| a | b |\n|---|---|\n| 1 | 2 |", "- one\n- two"):
        assert render(rich_markdown(text)) == render(Markdown(text))
