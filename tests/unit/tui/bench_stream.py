"""Benchmark (not a test): stream an answer from the scripted engine at 200 tokens/s through the
chat UI and report the UI's CPU time and how long each token takes to reach the screen.

    python tests/unit/tui/bench_stream.py [--tokens 1000] [--rate 200] [--behind-ms 150] [--size 100x30]

Token -> screen: from the moment the engine thread hands a token to the UI to the end of the first
frame written after the tick that put it in the answer (frames are turned into terminal bytes as on
a real terminal; the bytes go nowhere).  The UI moves text to the screen 8 times a second, so up to
125 ms of it is by design.  CPU: the process's user+system time minus the scripted engine thread's,
from Enter until the engine's last token is in (the stream); the final Markdown render of the whole
answer, once per answer, is reported on its own.  On a machine whose cores are busy with other work
both numbers grow (a starved UI also draws later): the load average is printed.
"""

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


def make_answer(tokens: int) -> str:
    """A Markdown-ish answer: paragraphs, a list, a heading and a code block every so often."""
    from tpuchat.tui.fake import split_tokens

    words = []
    i = 0
    while len(words) < tokens:
        if i % 400 == 399:
            words += ["\n\n```python", "\nx", " =", " 1", "\n```", "\n\n"]
        elif i % 60 == 0:
            words.append("\n\n## Part %d\n\n" % i if i % 240 == 0 else "\n\n- item")
        else:
            words.append(" w%d" % i)
        i += 1
    return "".join(split_tokens("".join(words[:tokens]))[:tokens])


class FrameClock:
    """Times each token from its hand-over to the end of the first frame written after it was put
    on screen, and counts frames and terminal bytes."""

    def __init__(self, app):
        self.app = app
        self.waiting = []  # hand-over times of tokens in the answer but not yet in a written frame
        self.latencies = []
        self.frames = 0
        self.bytes = 0

    def install(self):
        from textual.drivers.headless_driver import HeadlessDriver

        app, clock = self.app, self
        drain, display = app._drain, app._display

        async def timed_drain():
            buf = app.ctl.buffer
            n0, t0 = len(buf.latencies), buf.clock()
            await drain()
            # take() recorded (its own now - hand-over); t0 <= its now, so this errs on the slow side
            clock.waiting += [t0 - lat for lat in buf.latencies[n0:]]

        def timed_display(screen, renderable):
            display(screen, renderable)
            if renderable is not None:
                now = app.ctl.buffer.clock()
                clock.frames += 1
                clock.latencies += [now - t for t in clock.waiting]
                clock.waiting = []

        class EncodingDriver(HeadlessDriver):
            """Turns frames into terminal bytes like a real terminal driver, writes them nowhere."""

            is_headless = property(lambda self: False)

            def write(self, data: str) -> None:
                clock.bytes += len(data.encode("utf-8", "replace"))

        app._drain, app._display = timed_drain, timed_display
        app._driver.__class__ = EncodingDriver


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--behind-ms", type=float, default=150.0)
    ap.add_argument("--size", default="100x30")
    ap.add_argument("--warmup", type=int, default=1,
                    help="answers streamed at once before the timed one (0: time the first answer of a "
                         "fresh app, with its first imports and first code highlighting)")
    args = ap.parse_args()

    from tests.unit.tui.conftest import make_app
    from tpuchat.tui.fake import FakeModel

    answer = make_answer(args.tokens)
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
            for i in range(args.warmup):  # earlier turns: finished answers above the timed one
                rate, model.rate = model.rate, 0
                app.prompt.load_text("warm up %d" % i)
                await pilot.press("enter")
                while app.generating or len(app.session.conv.messages) < 2 * (i + 1):
                    await pilot.pause(0.05)
                await pilot.pause(0.5)
                model.rate = rate
            frames = FrameClock(app)
            frames.install()
            finish = app._finish
            ends = []

            async def timed_finish(tail):  # the stream ends where the answer's final render begins
                ends.append((time.perf_counter(), cpu_s(), time.thread_time(), frames.frames, frames.bytes))
                await finish(tail)

            app._finish = timed_finish
            c0, ui0, t0 = cpu_s(), time.thread_time(), time.perf_counter()
            app.prompt.load_text("stream please")
            await pilot.press("enter")
            # asyncio.sleep, not pilot.pause: a pause makes every widget answer a message and
            # forces a frame, which a real terminal session does not do
            while not app.generating:
                await asyncio.sleep(0.01)
            while app.generating:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the final Markdown is built after `generating` ends
            t1, c1, ui1, n_frames, n_bytes = ends[0]
            result.update(
                wall=t1 - t0,
                ui_thread_cpu=ui1 - ui0,
                proc_cpu=c1 - c0,
                finish_cpu=cpu_s() - c1,
                lat=sorted(frames.latencies),
                frames=n_frames,
                bytes=n_bytes,
                tokens=app.last_stats.new_tokens,
                tps=app.last_stats.tokens_per_s,
                text_ok=app.session.conv.messages[-1].content in (answer, answer.strip()),
            )

    asyncio.run(run())
    lat = result["lat"]
    n = len(lat)
    behind = sum(1 for x in lat if x * 1000 > args.behind_ms)

    def pct(p):
        return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    ui_cpu = result["proc_cpu"] - engine_cpu[0]
    wall = result["wall"]
    print(f"streamed {result['tokens']} tokens at {args.rate:.0f} tok/s target ({result['tps']:.1f} measured) "
          f"in {wall:.2f} s at {args.size}, after {args.warmup} earlier answer(s); text intact: {result['text_ok']}")
    print(f"token -> screen latency: p50 {pct(0.5):.0f} ms, p95 {pct(0.95):.0f} ms, p99 {pct(0.99):.0f} ms, "
          f"max {lat[-1] * 1000 if n else float('nan'):.0f} ms ({n} tokens timed)")
    print(f"fell behind (> {args.behind_ms:.0f} ms): {behind} of {n} tokens ({100.0 * behind / max(1, n):.1f}%)")
    print(f"frames written during the stream: {result['frames']} ({result['frames'] / wall:.1f}/s), "
          f"{result['bytes'] / wall / 1024:.0f} KiB/s to the terminal")
    print(f"UI CPU: {ui_cpu:.2f} s over {wall:.2f} s ({100 * ui_cpu / wall:.0f}% of a core); "
          f"event-loop thread {result['ui_thread_cpu']:.2f} s; scripted engine {engine_cpu[0]:.2f} s")
    print(f"final render of the whole answer (once, after the stream, 1 s window): {result['finish_cpu']:.2f} s CPU")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
