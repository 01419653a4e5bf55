"""What tpuchat learned about a runtime build, kept between runs.

A shared weight area is tried only where it can work: the shim checks each
shared load and falls back to whole loads when the runtime misplaces the
weights, which costs one wasted load of the first bmodel.  The verdict is
kept per runtime build (libbmrt's path, size and time) so that later runs
go straight to whole loads; TPUCHAT_SHARE_WEIGHTS=1 checks again.

Likewise the measured cost of choosing a greedy token on the device
(greedy_head) and on the host (logits + argmax), per bmodel file on that
runtime: the shim measures both once and keeps the cheaper, and on the
simulator a device head over a large vocabulary costs ~100 s a call, which
no one should pay twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..paths import runtime_checks_path
from .libfind import bmrt_library


def _stamp(path) -> Optional[str]:
    """A file's identity: resolved path, size and modification time."""
    try:
        p = Path(path)
        st = p.stat()
    except (OSError, TypeError):
        return None
    return f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}"


def _key(lib_dir) -> Optional[str]:
    p = bmrt_library(lib_dir)
    return _stamp(p) if p else None


def _file() -> Path:
    return runtime_checks_path()


def _read() -> dict:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _entry(lib_dir) -> dict:
    key = _key(lib_dir)
    entry = _read().get(key) if key else None
    return entry if isinstance(entry, dict) else {}


def share_refused(lib_dir) -> Optional[str]:
    """Why this runtime build cannot share a weight area, if a run found out."""
    note = _entry(lib_dir).get("share_note")
    return note if isinstance(note, str) and note else None


def remember_share_refused(lib_dir, note: str) -> None:
    if note:
        _update(lib_dir, lambda entry: entry.update(share_note=note))


def head_costs(lib_dir, bmodel) -> tuple:
    """(device_us, host_us) measured earlier for this bmodel on this runtime; 0 = unknown."""
    fkey = _stamp(bmodel)
    costs = _entry(lib_dir).get("head_costs", {}).get(fkey) if fkey else None
    try:
        return float(costs[0]), float(costs[1])
    except (TypeError, ValueError, IndexError):
        return 0.0, 0.0


def remember_head_costs(lib_dir, bmodel, device_us: float, host_us: float) -> None:
    fkey = _stamp(bmodel)
    if fkey and device_us > 0 and host_us > 0:
        _update(lib_dir, lambda entry: entry.setdefault("head_costs", {}).update({fkey: [device_us, host_us]}))


def _update(lib_dir, change) -> None:
    key = _key(lib_dir)
    if not key:
        return
    data = _read()
    entry = data.get(key) if isinstance(data.get(key), dict) else {}
    change(entry)
    data[key] = entry
    f = _file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")  # two engines may write at once
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, f)
    except OSError:  # a read-only home only costs the check next time
        pass
