"""Benchmark (not a test): how long `tpuchat --model M` takes to show a chat screen that takes a
keystroke, and the host memory of the UI and its engine worker.

    python bench/startup.py [--model M.bmodel] [--runs 5] [--no-wait-model]

Each run is a fresh Python process (cold imports, as a user's first start) that goes through
the real entry point (tpuchat.cli.main with `--model M`); the only changes are that the Textual
app runs headless (no terminal here) and reports when its first frame is drawn.  Measured from
just before the process is spawned:

  frame   the first screen is drawn (on_mount's layout refreshed, the prompt focused);
  typed   two keys sent after that frame are in the prompt (the UI answers typing);
  model   the model is open (tokenizer + engine worker + bmodel on the device/simulator).

Memory (VmRSS): the UI process at its first frame and once the model is open, and an engine
worker with the runtime loaded but no model (what "UI + worker without the model" means).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def probe(model: str, t0: float, out: str, wait_model: bool, via_transformers: bool) -> None:
    """Runs in the fresh process: the CLI as a user starts it, instrumented."""
    result = {}
    if via_transformers:  # the tokenizer as before hf_fast.py, for comparison
        from tpuchat.text import hf_fast

        hf_fast.can_load = lambda directory: False

    def stamp(name):
        result[name] = time.time() - t0

    # Patching before main() runs: importing the app module here is on the measured path anyway.
    from tpuchat import cli
    from tpuchat.tui.app import TpuchatApp

    cli._use_tui = lambda plain: True  # no terminal here
    orig_run, orig_mount = TpuchatApp.run, TpuchatApp.on_mount

    def run(self, *a, **kw):
        kw.update(headless=True, size=(100, 30))
        return orig_run(self, *a, **kw)

    async def after_first_frame(app):
        import asyncio

        stamp("frame_s")
        result["cpu_frame_s"] = time.process_time()  # CPU used up to here: less noisy on a busy machine
        result["ui_rss_frame_mb"] = rss_mb(os.getpid())
        result["transformers_at_frame"] = "transformers" in sys.modules
        await app._press_keys(["h", "i"])
        while app.prompt.text != "hi":
            await asyncio.sleep(0.001)
        stamp("typed_s")
        if wait_model:
            deadline = time.time() + 600
            while app.model is None and app.load_error is None and time.time() < deadline:
                await asyncio.sleep(0.02)
            stamp("model_s")
            result["load_error"] = app.load_error
            result["ui_rss_model_mb"] = rss_mb(os.getpid())
            proc = getattr(getattr(app.model, "client", None), "_proc", None)
            if proc is not None:
                result["worker_rss_model_mb"] = rss_mb(proc.pid)
        result["transformers_loaded"] = "transformers" in sys.modules
        result["numpy_loaded"] = "numpy" in sys.modules
        app.exit(0)

    def on_mount(self):
        orig_mount(self)
        self.call_after_refresh(lambda: self.run_worker(after_first_frame(self)))

    TpuchatApp.run, TpuchatApp.on_mount = run, on_mount
    sys.argv = ["tpuchat", "--model", model]
    try:
        cli.main()
    except SystemExit:
        pass
    with open(out, "w") as f:
        json.dump(result, f)


def worker_without_model_mb() -> float:
    """RSS of an engine worker that has found the runtime and listed devices, no model open."""
    sys.path.insert(0, str(REPO))
    from tpuchat.runtime.client import EngineClient

    with EngineClient() as c:
        c.devices()
        return rss_mb(c._proc.pid)


def default_model() -> str:
    cache = Path(os.environ.get("TPUCHAT_CACHE", Path.home() / ".cache" / "tpuchat")) / "models"
    found = sorted(p for p in cache.glob("*/*.bmodel") if (p.parent / "config").is_dir())
    if not found:
        sys.exit("no demo bmodel in the cache: run `tpuchat demo` once, or pass --model")
    return str(found[0])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe(sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", sys.argv[6] == "1")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-wait-model", action="store_true")
    ap.add_argument("--transformers", action="store_true", help="load the tokenizer through transformers")
    args = ap.parse_args()
    model = args.model or default_model()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TPUCHAT_DATA=tempfile.mkdtemp(prefix="tpuchat-bench-"), TEXTUAL_ANIMATIONS="none")
    runs = []
    for i in range(args.runs):
        out = tempfile.mktemp(suffix=".json")
        t0 = time.time()
        subprocess.run([sys.executable, __file__, "--probe", model, repr(t0), out,
                        "0" if args.no_wait_model else "1", "1" if args.transformers else "0"], env=env, check=True)
        with open(out) as f:
            r = json.load(f)
        os.unlink(out)
        runs.append(r)
        print(f"run {i + 1}: frame {r['frame_s']:.2f} s ({r['cpu_frame_s']:.2f} s CPU), typed {r['typed_s']:.2f} s"
              + (f", model open {r['model_s']:.2f} s" if "model_s" in r else "")
              + f"; UI RSS {r['ui_rss_frame_mb']:.0f} MB at first frame"
              + (f", {r['ui_rss_model_mb']:.0f} MB with the model open" if "ui_rss_model_mb" in r else "")
              + (f"; load error: {r['load_error']}" if r.get("load_error") else ""))

    def med(key):
        vals = [r[key] for r in runs if key in r]
        return statistics.median(vals) if vals else float("nan")

    print(f"model: {model}")
    print(f"median of {len(runs)} cold starts: first frame {med('frame_s'):.2f} s "
          f"({med('cpu_frame_s'):.2f} s CPU), "
          f"typing accepted {med('typed_s'):.2f} s" + (f", model open {med('model_s'):.2f} s"
                                                      if not args.no_wait_model else ""))
    print(f"transformers imported in the UI: at first frame {any(r['transformers_at_frame'] for r in runs)}, "
          f"by the end {any(r['transformers_loaded'] for r in runs)}; numpy {any(r['numpy_loaded'] for r in runs)}")
    worker = worker_without_model_mb()
    ui = med("ui_rss_model_mb") if not args.no_wait_model else med("ui_rss_frame_mb")
    print(f"host RSS without the model: UI {ui:.0f} MB (tokenizer loaded) + worker {worker:.0f} MB "
          f"(runtime found, no model) = {ui + worker:.0f} MB")
    if not args.no_wait_model:
        print(f"with the model open: worker {med('worker_rss_model_mb'):.0f} MB")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
