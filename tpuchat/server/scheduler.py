"""Several engines, many HTTP clients: one bounded FIFO of jobs, one thread per engine.

HTTP handler threads submit a Job and read its events from the job's own queue.  A job goes at
once to an idle engine, else waits in the FIFO; an engine that finishes takes the oldest waiting
job.  When several engines are idle, the job goes to the one whose cached tokens (the prompt and
answer of its last generation, whose KV rows are still on its device) share the longest prefix
with the job's prompt: a multi-turn client keeps its KV reuse.  Each engine thread streams its
job's events (Delta, then Finished, or an exception) into the job's queue, then the END marker.

An engine that crashes (EngineCrashed) fails only the job it was running; its thread restarts
it (the engine state is "restarting" meanwhile) and goes back to serving.  The other engines
keep serving throughout.

Cancelling (client gone, or a stop string matched): a waiting job is simply taken out of the
queue; a running job gets a cancel sent to its engine at once, which stops it within one decode
step and reports `Finished(stop_reason="cancelled")` with its stats.  An engine thread holds its
`send_lock` from "this job is current" until the engine has received the job's generate request
(and answered its first event), and a canceller holds the same lock while it checks "is this job
current?" and sends the cancel: so a cancel is never lost before the generation starts, and
never hits the engine's next job.

The engine interface the pool needs (ChatModel has it; tests use a scripted fake):
  stream_ids(ids, settings, **image_args) -> iterator of Delta ... Finished
  cancel()            stop the running generation
  restart()           optional: bring a crashed engine back (else client.ensure_open())
"""

import collections
import logging
import queue
import threading
import time
from typing import List, Optional, Sequence

from ..chat.session import Finished, GenSettings
from ..errors import EngineCrashed

log = logging.getLogger("tpuchat.server")

END = object()  # last item of every job's event queue
RESTART_BACKOFF_S = (0.5, 2.0, 5.0, 15.0)  # between failed restarts of a crashed engine
SIMILARITY = 0.5  # share of a prompt an engine's cache must hold for the prompt to prefer that engine


class QueueFull(Exception):
    pass


class Job:
    def __init__(self, ids: List[int], settings: GenSettings, image=None, image_pos: Optional[int] = None):
        self.ids = list(ids)
        self.settings = settings
        # A vision bmodel's image (ImageInputs) and the index of its token in ids.
        self.image_args = {} if image is None else {"image": image, "image_pos": image_pos}
        self.events = queue.Queue()  # Delta | Finished | Exception | END
        self.cancelled = threading.Event()
        self.cancel_reason = ""  # client (gone) | stop (a stop string matched) | shutdown
        self.submitted = time.monotonic()
        self.started: Optional[float] = None
        self.engine: Optional[int] = None  # index of the engine that ran it

    @property
    def queue_s(self) -> float:
        return (self.started or time.monotonic()) - self.submitted


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n, m = 0, min(len(a), len(b))
    while n < m and a[n] == b[n]:
        n += 1
    return n


def restart_engine(model) -> None:
    """Bring a crashed engine back: the model's restart(), or its engine client's ensure_open()."""
    restart = getattr(model, "restart", None)
    if restart is not None:
        restart()
    else:
        model.client.ensure_open()


class Engine:
    """One engine of the pool and what the pool knows about it."""

    def __init__(self, index: int, model, label: str):
        self.index = index
        self.model = model
        self.label = label  # e.g. the device ids "0" or "2,3"
        self.state = "idle"  # idle | busy | restarting
        self.job: Optional[Job] = None  # assigned or running
        self.cached: List[int] = []  # token ids whose KV rows the engine holds (best knowledge)
        self.send_lock = threading.Lock()
        self.busy_s = 0.0  # time spent generating
        self.last_used = 0.0  # monotonic time of its latest job (0: never)
        self.served = self.failed = self.restarts = 0
        self.thread: Optional[threading.Thread] = None

    def pid(self) -> Optional[int]:
        client = getattr(self.model, "client", None)
        return getattr(client, "pid", None) if client is not None else getattr(self.model, "pid", None)


class Scheduler:
    """Runs jobs on `models` (ChatModels or anything with stream_ids/cancel), one job per engine
    at a time.  `labels` names each engine (default: its index)."""

    def __init__(self, models, max_waiting: int = 8, labels: Optional[Sequence[str]] = None, metrics=None):
        if not isinstance(models, (list, tuple)):
            models = [models]
        labels = list(labels) if labels else [str(i) for i in range(len(models))]
        self.engines = [Engine(i, m, labels[i]) for i, m in enumerate(models)]
        self.model = models[0]
        self.max_waiting = max_waiting
        self.metrics = metrics
        self._waiting = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.served = 0
        self.cancelled = 0
        self.failed = 0
        for e in self.engines:
            e.thread = threading.Thread(target=self._run, args=(e,), name=f"tpuchat-engine-{e.index}", daemon=True)
            e.thread.start()

    # -- handler side ------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue a job; returns how many jobs are ahead of it (0: an engine takes it at once).
        QueueFull when every engine is busy and the queue is full."""
        with self._cv:
            if self._closed:
                raise QueueFull("the server is shutting down")
            idle = self._idle()
            if idle:
                self._assign(job, idle)
                return 0
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            return len(self._waiting) - 1 + len(self.engines)

    def cancel(self, job: Job, reason: str = "client") -> None:
        """Stop a job wherever it is (waiting: dropped; running: its engine stops it)."""
        if job.cancelled.is_set():
            return
        job.cancel_reason = reason
        job.cancelled.set()
        with self._cv:
            try:
                self._waiting.remove(job)
            except ValueError:
                eng = self.engines[job.engine] if job.engine is not None else None
            else:
                self.cancelled += 1
                job.events.put(END)
                return
        if eng is None:
            return
        with eng.send_lock:
            if eng.job is job and eng.state == "busy":
                try:
                    eng.model.cancel()
                except Exception as e:  # the engine died: its thread reports it
                    log.warning("cancel failed: %s", e)

    def status(self) -> dict:
        with self._cv:
            states = [e.state for e in self.engines]
            return {"busy": "idle" not in states, "waiting": len(self._waiting), "max_waiting": self.max_waiting,
                    "served": self.served, "cancelled": self.cancelled, "failed": self.failed,
                    "engines": [{"devices": e.label, "state": e.state, "pid": e.pid(), "served": e.served,
                                 "failed": e.failed, "restarts": e.restarts, "busy_s": round(e.busy_s, 3),
                                 "cached_tokens": len(e.cached)} for e in self.engines]}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            pending = list(self._waiting)
            self._waiting.clear()
            self._cv.notify_all()
        for job in pending:
            job.cancel_reason = "shutdown"
            job.cancelled.set()
            job.events.put(END)
        for e in self.engines:
            job = e.job
            if job is not None:
                self.cancel(job, "shutdown")
        for e in self.engines:
            e.thread.join(timeout=10)

    # -- routing (under self._cv) ------------------------------------------------------------
    def _idle(self) -> List[Engine]:
        return [e for e in self.engines if e.state == "idle" and e.job is None]

    def _assign(self, job: Job, idle: List[Engine]) -> None:
        """Give `job` to an idle engine: the one whose cached tokens share the longest prefix with
        it, if that prefix is at least SIMILARITY of the prompt (the request continues what the
        engine holds, like llama-server's --slot-prompt-similarity); otherwise the engine idle
        longest, whose cached conversation is the least likely to come back."""
        best = max(idle, key=lambda e: (common_prefix(e.cached, job.ids), -e.last_used))
        if common_prefix(best.cached, job.ids) < SIMILARITY * len(job.ids):
            best = min(idle, key=lambda e: (e.last_used, e.index))
        job.engine = best.index
        best.job = job
        best.last_used = time.monotonic()
        self._cv.notify_all()

    # -- engine threads ----------------------------------------------------------------------
    def _next_job(self, eng: Engine) -> Optional[Job]:
        with self._cv:
            while True:
                if self._closed:
                    return None
                if eng.job is None and self._waiting:
                    # The oldest waiting job; when several engines are idle it goes to the best one.
                    self._assign(self._waiting.popleft(), self._idle())
                if eng.job is not None:
                    with eng.send_lock:  # no cancel in between: see the module docstring
                        eng.state = "busy"
                    return eng.job
                self._cv.wait()

    def _run(self, eng: Engine) -> None:
        while True:
            job = self._next_job(eng)
            if job is None:
                return
            job.started = time.monotonic()
            outcome, crashed = "cancelled", False
            try:
                if not job.cancelled.is_set():
                    outcome = self._generate(eng, job)
            except Exception as e:  # TpuchatError from the engine, or a bug
                outcome = "failed"
                crashed = isinstance(e, EngineCrashed)
                if crashed:
                    eng.cached = []
                job.events.put(e)
            finally:
                busy = time.monotonic() - job.started
                with self._cv:
                    with eng.send_lock:
                        eng.job = None
                        eng.state = "restarting" if crashed else "idle"
                    eng.busy_s += busy
                    if outcome == "served":
                        self.served += 1
                        eng.served += 1
                    elif outcome == "cancelled":
                        self.cancelled += 1
                    else:
                        self.failed += 1
                        eng.failed += 1
                job.events.put(END)
            if crashed:
                self._restart(eng)

    def _restart(self, eng: Engine) -> None:
        """Restart a crashed engine, retrying with a growing pause; the others serve meanwhile."""
        attempt = 0
        while not self._closed:
            eng.restarts += 1
            if self.metrics is not None:
                self.metrics.engine_restarted()
            try:
                restart_engine(eng.model)
                break
            except Exception as e:
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                log.warning("engine %s (devices %s) did not restart: %s; retrying in %.1f s", eng.index,
                            eng.label, e, delay)
                attempt += 1
                with self._cv:
                    self._cv.wait(delay)
        with self._cv:
            eng.state = "idle"
            self._cv.notify_all()
        log.warning("engine %s (devices %s) restarted", eng.index, eng.label)

    def _generate(self, eng: Engine, job: Job) -> str:
        it = iter(eng.model.stream_ids(job.ids, job.settings, **job.image_args))
        eng.cached = []  # whatever happens next, the old cache is being overwritten
        try:
            # The first next() sends the generate request to the engine: under the lock, so a
            # cancel arriving meanwhile waits and then reaches this generation.
            with eng.send_lock:
                if job.cancelled.is_set():
                    return "cancelled"
                first = next(it, None)
            if first is None:
                return "failed"
            job.events.put(first)
            last = first
            for ev in it:
                job.events.put(ev)
                last = ev
            if isinstance(last, Finished):
                # The KV rows of the prompt and the answer (but its last token) are on the device.
                eng.cached = job.ids + list(last.token_ids[:-1])
                if last.reason == "cancelled" and job.cancel_reason != "stop":
                    return "cancelled"
            return "served"
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
