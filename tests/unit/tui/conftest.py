"""Fixtures for the chat UI tests: an app over the scripted FakeModel, with its own
SQLite file and config file (nothing touches the user's data)."""

import os

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


def make_app(tmp_path, model=None, backend=None, open_model=True, **kw):
    """The real TpuchatApp over a FakeBackend (FakeModel unless `model` is given)."""
    from tpuchat import config as cfg
    from tpuchat.store import Store
    from tpuchat.tui.app import TpuchatApp
    from tpuchat.tui.backend import FakeBackend
    from tpuchat.tui.fake import FakeModel

    if backend is None:
        backend = FakeBackend(lambda path, devids: model if model is not None else FakeModel(devids=devids))
    store = kw.pop("store", None) or Store(tmp_path / "chats.db")
    return TpuchatApp(
        backend=backend,
        model_path=kw.pop("model_path", "/models/fake-qwen2-7b_w4bf16_seq512.bmodel" if open_model else None),
        devids=kw.pop("devids", [0]),
        store=store,
        settings=kw.pop("settings", cfg.Settings()),
        config_file=tmp_path / "config.toml",
        **kw,
    )


@pytest.fixture
def app_factory(tmp_path):
    def factory(**kw):
        return make_app(tmp_path, **kw)

    return factory
