"""What tpuchat learned about a runtime build, kept between runs.

A shared weight area is tried only where it can work: the shim checks each
shared load and falls back to whole loads when the runtime misplaces the
weights, which costs one wasted load of the first bmodel.  The verdict is
kept per runtime build (libbmrt's path, size and time) so that later runs
go straight to whole loads; TPUCHAT_SHARE_WEIGHTS=1 checks again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..paths import runtime_checks_path
from .libfind import bmrt_library


def _key(lib_dir) -> Optional[str]:
    p = bmrt_library(lib_dir)
    try:
        st = p.stat() if p else None
    except OSError:
        return None
    return f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}" if st else None


def _file() -> Path:
    return runtime_checks_path()


def _read() -> dict:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def share_refused(lib_dir) -> Optional[str]:
    """Why this runtime build cannot share a weight area, if a run found out."""
    key = _key(lib_dir)
    entry = _read().get(key) if key else None
    note = entry.get("share_note") if isinstance(entry, dict) else None
    return note if isinstance(note, str) and note else None


def remember_share_refused(lib_dir, note: str) -> None:
    key = _key(lib_dir)
    if not key or not note:
        return
    data = _read()
    data[key] = {"share_note": note}
    f = _file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, f)
    except OSError:  # a read-only home only costs the check next time
        pass
