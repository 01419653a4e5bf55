"""What a 80x24 terminal shows: a settings form that does not fit says it scrolls, and a top-1
build's vocabulary (which the shim cannot see) is read from config.json or shown as n/a."""

import asyncio
import dataclasses
import json

import pytest

from tpuchat.tui.fake import fake_desc
from tpuchat.tui.screens import describe_lines

pytestmark = pytest.mark.timeout(60)


def test_settings_say_they_scroll_until_the_end_is_in_view(app_factory):
    async def go():
        app = app_factory()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            await pilot.press("f4")
            await pilot.pause(0.3)
            screen = app.screen
            form = screen.query_one("#settings-form")
            hint = screen.query_one("#settings-error")

            def shown() -> str:
                return str(hint.content)

            assert form.max_scroll_y > 0 and screen.more_below  # seed and friends are below the fold
            assert "more settings below" in shown()
            assert screen.query_one("#conversation").region.bottom <= 24  # the buttons stay on screen
            form.scroll_end(animate=False)
            await pilot.pause(0.3)
            assert not screen.more_below and "more settings" not in shown()
            form.scroll_home(animate=False)
            await pilot.pause(0.3)
            assert "more settings below" in shown()

    asyncio.run(go())


def test_a_top1_build_shows_its_vocabulary_from_config_json_or_na(tmp_path):
    top1 = dataclasses.replace(fake_desc(), vocab_size=0)  # what the shim reports for lm_head top1
    assert "vocab n/a" in describe_lines(top1, None)
    assert "vocab 0" not in describe_lines(top1, str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 151936}))
    assert "vocab 151936 (config.json)" in describe_lines(top1, str(tmp_path))
    assert "vocab 152064" in describe_lines(dataclasses.replace(top1, vocab_size=152064), str(tmp_path))
