"""Snapshot tests (pytest-textual-snapshot) of the main screen mid-stream and of the
model picker, device picker and settings screen, at 80x24, with the scripted engine.

Update the saved SVGs after an intended change: pytest tests/unit/tui/test_snapshots.py --snapshot-update
"""

import threading
from pathlib import Path

import pytest

from tpuchat import config as cfg
from tpuchat.store import Store
from tpuchat.tui.app import TpuchatApp
from tpuchat.tui.backend import FakeBackend
from tpuchat.tui.fake import FakeModel, split_tokens

pytest.importorskip("pytest_textual_snapshot")
pytestmark = pytest.mark.timeout(120)

SIZE = (80, 24)


class FrozenModel(FakeModel):
    """Streams the first `upto` tokens at once, then holds until released: a stable mid-stream frame."""

    def __init__(self, upto: int, **kw):
        super().__init__(rate=0, prefill_s=0, **kw)
        self.upto = upto
        self.release = threading.Event()
        self.reached = threading.Event()

    def stream_ids(self, ids, settings):
        for i, ev in enumerate(super().stream_ids(ids, settings)):
            if i == self.upto:
                self.reached.set()
                self.release.wait(30)
            yield ev

    def cancel(self) -> None:  # the app stops the answer when it exits: do not hold it 30 s
        self.release.set()
        super().cancel()

    def close(self) -> None:
        self.release.set()
        super().close()


class SnapApp(TpuchatApp):
    """Fixed numbers where the real app shows measured times."""

    def live_stats(self):
        buf = self.ctl.buffer
        return {"ftl_s": 0.42, "tokens_per_s": 18.5, "new_tokens": buf.tokens} if buf.t_first else {}


def make(tmp_path, model, **kw):
    backend = FakeBackend(lambda p, d: model)
    return SnapApp(backend=backend, model_path="/models/fake-qwen2-7b_w4bf16_seq512.bmodel", devids=[0],
                   store=Store(tmp_path / "chats.db"), settings=cfg.Settings(),
                   config_file=Path("/home/me/.config/tpuchat/config.toml"), **kw)


async def settle(pilot):
    app = pilot.app
    while app.model is None:
        await pilot.pause(0.05)
    app.prompt.cursor_blink = False
    app.clear_notifications()
    await pilot.pause(0.1)


def test_main_screen_mid_stream(snap_compare, tmp_path):
    model = FrozenModel(upto=len(split_tokens(FakeModel().answer)) - 12)
    app = make(tmp_path, model)

    async def run_before(pilot):
        await settle(pilot)
        app.prompt.load_text("Write bubble sort in Python")
        await pilot.press("enter")
        while not model.reached.is_set():
            await pilot.pause(0.05)
        await pilot.pause(0.3)  # two drain ticks
        app.prompt.load_text("and now in C?")
        app.clear_notifications()
        await pilot.pause(0.2)

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    finally:
        model.release.set()


def test_model_picker(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("qwen2-7b_w4bf16_seq512.bmodel", "qwen2.5-3b_int8_seq1024.bmodel", "llama3-8b_w4bf16_seq512.bmodel"):
        (tmp_path / name).write_bytes(b"x")
    app = make(tmp_path, FakeModel())

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f2")
        await pilot.pause(0.5)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_device_picker(snap_compare, tmp_path):
    app = make(tmp_path, FakeModel())

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f3")
        await pilot.pause(0.5)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_settings_screen(snap_compare, tmp_path):
    app = make(tmp_path, FakeModel())

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f4")
        await pilot.pause(0.3)
        app.screen.query_one("#set-system").cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, tmp_path):
    app = make(tmp_path, FakeModel())

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
