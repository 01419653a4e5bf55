"""`tpuchat doctor`: what runtime is found, its devices, and what is missing."""

import platform
import sys
from typing import Optional

from rich.console import Console

from . import __version__
from .errors import TpuchatError


def run_doctor(lib_dir: Optional[str] = None) -> int:
    from .runtime.libfind import _has_libs, candidates

    c = Console(highlight=False)
    problems = []
    c.print(f"tpuchat {__version__} · Python {platform.python_version()} · {platform.machine()} · {sys.executable}")

    try:
        from . import _shim  # noqa: F401

        c.print("[green]✓[/green] native shim built")
    except ImportError as e:
        c.print(f"[red]✗[/red] native shim not built ({e})")
        problems.append("reinstall tpuchat so the shim compiles: pip install -e . (needs gcc and Python headers)")

    c.print("runtime search order:")
    for d, source in candidates(lib_dir):
        mark = "[green]✓[/green]" if _has_libs(d) else "[dim]·[/dim]"
        c.print(f"  {mark} {d} [dim]({source})[/dim]")

    found = None
    if not problems:
        from .runtime.client import EngineClient

        try:
            with EngineClient() as client:
                found = client.devices(lib_dir)
        except TpuchatError as e:
            c.print(f"[red]✗[/red] {e}")
            if "tpuchat sim install" not in str(e):
                problems.append(str(e))
            else:
                problems.append("no runtime: on a board install libsophon; elsewhere run: tpuchat sim install")
    if found:
        c.print(
            f"[green]✓[/green] runtime: {found['kind']}"
            + (f" ({found['version']})" if found.get("version") else "")
            + f" at {found['path']} [dim](chosen by {found['source']})[/dim]"
        )
        c.print(f"  devices: {found['count']}")
        for d in found["devices"]:
            if d["mem_total_mb"] > 0:
                c.print(f"    device {d['devid']}: {d['mem_used_mb']} / {d['mem_total_mb']} MB used, TPU {d['tpu_util']}%")
            else:
                c.print(f"    device {d['devid']}: memory not reported" + (" (simulator)" if found["kind"] == "simulator" else ""))
        if found["count"] == 0:
            problems.append("the runtime sees no device: check the driver (ls /dev/bm-sophon* or /dev/bmdev*)")

    if problems:
        c.print("[bold red]missing:[/bold red]")
        for p in problems:
            c.print(f"  - {p}")
        return 1
    c.print("[green]all good[/green]")
    return 0
