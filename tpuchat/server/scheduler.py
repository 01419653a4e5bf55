"""One engine, many HTTP clients: a bounded FIFO of jobs and the single thread that runs them.

HTTP handler threads submit a Job and read its events from the job's own queue.  The engine
thread takes jobs in arrival order and streams each one's events (Delta, then Finished, or an
exception) into that queue; then the END marker.

Cancelling (client gone, or a stop string matched): a waiting job is simply taken out of the
queue; the running job gets a cancel sent to the engine worker at once, which stops it within
one decode step and reports `Finished(stop_reason="cancelled")` with its stats.  The engine
thread holds `_send_lock` from "this job is current" until the engine has received the job's
generate request (and answered its first event), and a canceller holds the same lock while it
checks "is this job current?" and sends the cancel: so a cancel is never lost before the
generation starts, and never hits the next job.
"""

import collections
import logging
import queue
import threading
import time
from typing import List, Optional

from ..chat.session import Finished, GenSettings

log = logging.getLogger("tpuchat.server")

END = object()  # last item of every job's event queue


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

    @property
    def queue_s(self) -> float:
        return (self.started or time.monotonic()) - self.submitted


class Scheduler:
    """Runs jobs one at a time on `model` (a ChatModel or anything with stream_ids/cancel)."""

    def __init__(self, model, max_waiting: int = 8):
        self.model = model
        self.max_waiting = max_waiting
        self._waiting = collections.deque()
        self._cv = threading.Condition()
        self._send_lock = threading.Lock()
        self._current: Optional[Job] = None
        self._closed = False
        self.served = 0
        self.cancelled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="tpuchat-engine", daemon=True)
        self._thread.start()

    # -- handler side ------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue a job; returns how many jobs are ahead of it.  QueueFull when the queue is full."""
        with self._cv:
            if self._closed:
                raise QueueFull("the server is shutting down")
            # An idle engine takes one more (it is about to run, not wait).
            room = self.max_waiting + (1 if self._current is None else 0)
            if len(self._waiting) >= room:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            ahead = len(self._waiting) + (1 if self._current is not None else 0)
            self._waiting.append(job)
            self._cv.notify()
            return ahead

    def cancel(self, job: Job, reason: str = "client") -> None:
        """Stop a job wherever it is (waiting: dropped; running: the engine stops it)."""
        if job.cancelled.is_set():
            return
        job.cancel_reason = reason
        job.cancelled.set()
        with self._cv:
            try:
                self._waiting.remove(job)
            except ValueError:
                pass
            else:
                self.cancelled += 1
                job.events.put(END)
                return
        with self._send_lock:
            if self._current is job:
                try:
                    self.model.cancel()
                except Exception as e:  # the engine died: the engine thread reports it
                    log.warning("cancel failed: %s", e)

    def status(self) -> dict:
        with self._cv:
            return {"busy": self._current is not None, "waiting": len(self._waiting),
                    "max_waiting": self.max_waiting, "served": self.served, "cancelled": self.cancelled,
                    "failed": self.failed}

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
        current = self._current
        if current is not None:
            self.cancel(current, "shutdown")
        self._thread.join(timeout=10)

    # -- engine thread -----------------------------------------------------------------------
    def _next_job(self) -> Optional[Job]:
        with self._cv:
            while not self._waiting and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            job = self._waiting.popleft()
            with self._send_lock:  # no cancel in between: see the module docstring
                self._current = job
            return job

    def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            job.started = time.monotonic()
            outcome = "cancelled"
            try:
                if not job.cancelled.is_set():
                    outcome = self._generate(job)
            except Exception as e:  # TpuchatError from the engine, or a bug
                outcome = "failed"
                job.events.put(e)
            finally:
                with self._send_lock:
                    self._current = None
                with self._cv:
                    if outcome == "served":
                        self.served += 1
                    elif outcome == "cancelled":
                        self.cancelled += 1
                    else:
                        self.failed += 1
                job.events.put(END)

    def _generate(self, job: Job) -> str:
        it = iter(self.model.stream_ids(job.ids, job.settings, **job.image_args))
        try:
            # The first next() sends the generate request to the engine: under the lock, so a
            # cancel arriving meanwhile waits and then reaches this generation.
            with self._send_lock:
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
            if isinstance(last, Finished) and last.reason == "cancelled" and job.cancel_reason != "stop":
                return "cancelled"
            return "served"
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
