"""The status bar: the UI's state and the line that shows it (no Textual here)."""

from __future__ import annotations

from enum import Enum
from typing import List, Optional, Sequence

from rich.markup import escape

from ..chat.statsline import stats_parts


class UiState(str, Enum):
    """What the chat UI is doing (its value is what the status bar says)."""

    NO_MODEL = "no model"
    LOADING = "loading"
    IDLE = "idle"
    PREFILL = "prefill"
    GENERATING = "generating"
    STOPPING = "stopping"
    ERROR = "error"

    @property
    def colour(self) -> str:
        return {"idle": "green", "generating": "cyan", "error": "red", "no model": "red"}.get(self.value, "yellow")

    def __str__(self) -> str:
        return self.value


SEP = " │ "


def status_line(name: str, state: UiState, stats, width: int, devids: Sequence[int] = (), desc=None,
                ctx_used: int = 0) -> str:
    """Model name, devices, state, FTL and tokens/s, context and memory; on a narrow terminal
    memory goes first, then the device ids, then the model name is shortened."""
    from rich.text import Text

    rest: List[str] = []
    if desc is not None:
        rest.append("dev " + ",".join(map(str, devids)))
    rest.append(f"[b {state.colour}]{state.value}[/]")
    rest += stats_parts(stats, "status")
    if desc is not None:
        rest.append(f"ctx {ctx_used}/{desc.kv_len}")
        total = sum(x.mem_total_mb for x in desc.devices)
        used = sum(x.mem_used_mb for x in desc.devices)
        rest.append(f"mem {used / 1024:.1f}/{total / 1024:.1f}G" if total > 0 else "mem n/a")

    def cells(parts) -> int:
        return Text.from_markup(SEP.join(parts)).cell_len

    for drop in ("mem ", "dev "):
        if name and cells([name] + rest) > width:
            rest = [p for p in rest if not p.startswith(drop)]
    tail = SEP.join(rest)
    if not name:
        return tail
    room = max(10, width - cells(rest) - len(SEP))
    if len(name) > room:
        name = name[: room - 1] + "…"
    return f"[b]{escape(name)}[/b]{SEP}{tail}"


def model_label(model, model_path: Optional[str]) -> str:
    from pathlib import Path

    return model.name if model is not None else (Path(model_path).name if model_path else "")
