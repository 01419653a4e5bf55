"""Where tpuchat keeps things (XDG dirs via platformdirs, overridable by env)."""

import os
from pathlib import Path


def _platformdirs():
    import platformdirs

    return platformdirs


def cache_dir() -> Path:
    """Downloaded simulator libraries, compiler venv, built demo models."""
    env = os.environ.get("TPUCHAT_CACHE")
    if env:
        return Path(env)
    return Path(_platformdirs().user_cache_dir("tpuchat"))


def state_dir() -> Path:
    """Engine logs."""
    env = os.environ.get("TPUCHAT_STATE")
    if env:
        return Path(env)
    return Path(_platformdirs().user_state_dir("tpuchat"))


def simulator_dir(version: str) -> Path:
    return cache_dir() / "simulator" / version
