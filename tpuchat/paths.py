"""Where tpuchat keeps things: every file location is decided here.

Each directory is the XDG/platform one from platformdirs, unless its
environment variable says otherwise:

  cache   $TPUCHAT_CACHE   simulator libraries, compiler venv, built test/demo models
  state   $TPUCHAT_STATE   engine log, runtime check verdicts
  data    $TPUCHAT_DATA    saved conversations (chats.db)
  config  $TPUCHAT_CONFIG  the settings file itself (config.toml)
"""

import os
from pathlib import Path


def _user_dir(kind: str) -> Path:
    try:
        import platformdirs
    except ImportError:  # the compiler's bare interpreter: the same answer as platformdirs on Linux
        xdg = {"cache": ("XDG_CACHE_HOME", ".cache"), "state": ("XDG_STATE_HOME", ".local/state"),
               "data": ("XDG_DATA_HOME", ".local/share"), "config": ("XDG_CONFIG_HOME", ".config")}[kind]
        base = os.environ.get(xdg[0], "").strip() or str(Path.home() / xdg[1])
        return Path(base) / "tpuchat"
    return Path(getattr(platformdirs, f"user_{kind}_dir")("tpuchat"))


def _env_dir(var: str, kind: str) -> Path:
    env = os.environ.get(var)
    if env:
        return Path(env).expanduser().resolve()
    return _user_dir(kind)


def cache_dir() -> Path:
    """Downloaded simulator libraries, compiler venv, built demo models."""
    return _env_dir("TPUCHAT_CACHE", "cache")


def state_dir() -> Path:
    """Engine logs, remembered runtime checks."""
    return _env_dir("TPUCHAT_STATE", "state")


def data_dir() -> Path:
    """Saved conversations."""
    return _env_dir("TPUCHAT_DATA", "data")


def config_file() -> Path:
    """The settings file (TOML)."""
    env = os.environ.get("TPUCHAT_CONFIG")
    if env:
        return Path(env).expanduser()
    return _user_dir("config") / "config.toml"


def db_path() -> Path:
    return data_dir() / "chats.db"


def engine_log_path() -> Path:
    return state_dir() / "engine.log"


def runtime_checks_path() -> Path:
    return state_dir() / "runtime-checks.json"


def simulator_dir(version: str) -> Path:
    return cache_dir() / "simulator" / version
