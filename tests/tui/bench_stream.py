"""Benchmark (not a test): stream 2,000 tokens from the scripted engine at 200 tokens/s through
the chat UI and report how many tokens fall behind and the UI's CPU time.

    python tests/tui/bench_stream.py [--tokens 2000] [--rate 200] [--behind-ms 200]

A token "falls behind" when it reaches the screen (is appended to the answer's
Markdown) more than --behind-ms after the engine produced it.  The UI batches
text 10 times a second, so up to 100 ms of latency is by design.  CPU time is the
process's user+system time minus the scripted engine thread's, over the stream
(the final full Markdown render of the answer is outside it).  On a machine whose
cores are busy with other work, both numbers grow: the load average is printed.
"""

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--behind-ms", type=float, default=200.0)
    ap.add_argument("--size", default="100x30")
    args = ap.parse_args()

    from tests.tui.conftest import make_app
    from tpuchat.tui.fake import FakeModel

    # A Markdown-ish answer: paragraphs, a list, a code block every so often.
    words = []
    i = 0
    while len(words) < args.tokens:
        if i % 400 == 399:
            words += ["\n\n```python", "\nx", " =", " 1", "\n```", "\n\n"]
        elif i % 60 == 0:
            words.append("\n\n## Part %d\n\n" % i if i % 240 == 0 else "\n\n- item")
        else:
            words.append(" w%d" % i)
        i += 1
    from tpuchat.tui.fake import split_tokens

    answer = "".join(words[: args.tokens])
    answer = "".join(split_tokens(answer)[: args.tokens])
    engine_cpu = [0.0]

    class TimedModel(FakeModel):
        def stream_ids(self, ids, settings):
            t0 = time.thread_time()
            for ev in super().stream_ids(ids, settings):
                engine_cpu[0] += time.thread_time() - t0
                yield ev
                t0 = time.thread_time()

    model = TimedModel(answer=answer, rate=args.rate, prefill_s=0)
    w, h = (int(x) for x in args.size.split("x"))
    result = {}

    async def run():
        tmp = Path(tempfile.mkdtemp())
        from tpuchat import config as cfg

        app = make_app(tmp, model=model, settings=cfg.Settings(max_new_tokens=args.tokens * 2))
        async with app.run_test(size=(w, h)) as pilot:
            while app.model is None:
                await pilot.pause(0.05)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            ui0 = time.thread_time()
            t0 = time.perf_counter()
            app.prompt.load_text("stream please")
            await pilot.press("enter")
            while not app.generating:
                await pilot.pause(0.01)
            while app.generating:
                await pilot.pause(0.05)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            ui1 = time.thread_time()
            await pilot.pause(0.5)  # let the final render finish before the app closes
            result.update(
                wall=wall,
                ui_thread_cpu=ui1 - ui0,
                proc_cpu=(r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                lat=sorted(app.latencies),
                tokens=app.last_stats.new_tokens,
                tps=app.last_stats.tokens_per_s,
                text_ok=app.session.conv.messages[-1].content == answer.strip() or
                app.session.conv.messages[-1].content == answer,
            )

    asyncio.run(run())
    lat = result["lat"]
    n = len(lat)
    behind = sum(1 for x in lat if x * 1000 > args.behind_ms)

    def pct(p):
        return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    ui_cpu = result["proc_cpu"] - engine_cpu[0]
    print(f"streamed {result['tokens']} tokens at {args.rate:.0f} tok/s target ({result['tps']:.1f} measured) "
          f"in {result['wall']:.2f} s; text intact: {result['text_ok']}")
    print(f"token -> screen latency: p50 {pct(0.5):.0f} ms, p95 {pct(0.95):.0f} ms, p99 {pct(0.99):.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms")
    print(f"fell behind (> {args.behind_ms:.0f} ms): {behind} of {n} tokens ({100.0 * behind / max(1, n):.1f}%)")
    print(f"UI CPU: {ui_cpu:.2f} s over {result['wall']:.2f} s ({100 * ui_cpu / result['wall']:.0f}% of a core); "
          f"event-loop thread {result['ui_thread_cpu']:.2f} s; scripted engine {engine_cpu[0]:.2f} s")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
