"""Parent side of the engine worker (see worker.py).

All front ends (CLI, chat UI, server) drive the engine through EngineClient.
If the worker dies, the caller gets EngineCrashed with the exit reason and
the tail of the log; the next request starts a fresh worker.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from ..errors import EngineCrashed, SharedWeightsRefused, TpuchatError
from ..paths import engine_log_path
from . import protocol as P
from .image_inputs import ImageInputs
from .protocol import GenerationStats, ModelDesc


@dataclass
class TokenEvent:
    id: int


@dataclass
class DoneEvent:
    stats: GenerationStats


def _exit_reason(code: Optional[int]) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {"SIGABRT": " (aborted inside the runtime)", "SIGSEGV": " (crashed)", "SIGKILL": " (killed)"}
        return f"was killed by {name}{hint.get(name, '')}"
    return f"exited with code {code}"


def _whole_host_path(stats: GenerationStats, arrivals: list) -> None:
    """host_us_per_token as this process saw it: the time between two tokens'
    arrivals here (worker loop, pipe, this process reading and handling the
    previous token) minus the device time of a step.  The worker's own share
    stays in worker_host_us_per_token."""
    steps = len(arrivals) - 1
    if steps < 1:
        return
    per_step_us = (arrivals[-1] - arrivals[0]) / steps * 1e6
    stats.host_us_per_token = max(stats.worker_host_us_per_token, per_step_us - stats.device_ms_per_token * 1e3)


class EngineClient:
    """Runs an Engine in a child process and streams its events."""

    def __init__(self, log_path: Optional[Union[str, Path]] = None, stall_timeout: Optional[float] = None):
        self.log_path = Path(log_path) if log_path else engine_log_path()
        # A hung device or runtime sends nothing: past this many seconds
        # without a word from the worker, it is killed and reported.
        if stall_timeout is None:
            stall_timeout = float(os.environ.get("TPUCHAT_ENGINE_TIMEOUT", "300"))
        self.stall_timeout = stall_timeout
        self._proc: Optional[subprocess.Popen] = None
        self._conn = None
        self.desc: Optional[ModelDesc] = None
        self._open_args: Optional[dict] = None
        self._pinned: list = []  # shared prefix ids, pinned again after a restart
        self._gen = 0  # id of the latest generation
        # cancel() comes from other threads (UI, HTTP handlers) while one reads.
        self._send_lock = threading.Lock()
        # Digest of the image the worker's engine holds: its pixels are not sent again.
        self._worker_image: Optional[str] = None

    # -- process management ----------------------------------------------
    def _start(self) -> None:
        from multiprocessing.connection import Connection

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent_sock, child_sock = socket.socketpair()
        log = open(self.log_path, "ab")
        log.write(f"\n--- engine worker started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        log.flush()
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tpuchat.runtime.worker", str(child_sock.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(child_sock.fileno(),),
                env=env,
                start_new_session=True,  # Ctrl+C in the terminal goes to the parent only
            )
        finally:
            child_sock.close()
            log.close()
        self._conn = Connection(parent_sock.detach())
        self._worker_image = None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        try:
            data = self.log_path.read_bytes()[-8192:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def _crashed(self) -> EngineCrashed:
        code = None
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._drop()
        err = EngineCrashed(f"the engine process {_exit_reason(code)}; log: {self.log_path}")
        err.log_tail = self.log_tail()
        return err

    def _stalled(self) -> EngineCrashed:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._drop()
        err = EngineCrashed(
            f"the engine stopped responding for {self.stall_timeout:.0f} s (hung device or runtime?) and was "
            f"stopped; log: {self.log_path}"
        )
        err.log_tail = self.log_tail()
        return err

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
        self._proc = None

    def _send(self, request) -> None:
        try:
            with self._send_lock:
                self._conn.send(request)
        except (OSError, EOFError):
            raise self._crashed() from None

    def _recv(self):
        deadline = time.monotonic() + self.stall_timeout
        try:
            while not self._conn.poll(0.2):
                if not self._alive():
                    # The child may have sent its last words before dying.
                    if self._conn.poll(0):
                        break
                    raise self._crashed()
                if time.monotonic() > deadline:
                    raise self._stalled()
            return self._conn.recv()
        except (OSError, EOFError):
            raise self._crashed() from None

    def _call(self, request, start: bool = False):
        """Send one request and return its answer's value (the error it reports, raised).
        start: start the worker if none runs; else restart it and reload the model after a crash."""
        if start:
            if not self._alive():
                self._drop()
                self._start()
        else:
            self.ensure_open()
        self._send(request)
        ev = self._recv()
        if isinstance(ev, P.Failed):
            raise ev.exception()
        return ev.desc if isinstance(ev, P.Opened) else ev.value

    # -- API ---------------------------------------------------------------
    def open(self, bmodel: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None) -> ModelDesc:
        """Load a bmodel; returns its description."""
        self._open_args = {"bmodel": str(bmodel), "devids": list(devids), "lib_dir": lib_dir}
        self._pinned = []
        self._worker_image = None  # a newly opened model holds no image
        try:
            self.desc = self._call(P.Open(str(bmodel), list(devids), lib_dir), start=True)
        except SharedWeightsRefused as e:
            # That worker's runtime is not trusted after the refused load: a fresh one loads
            # each member whole (a restart after a crash does the same).
            self.close()
            self.desc = self._call(P.Open(str(bmodel), list(devids), lib_dir, str(e)), start=True)
        return self.desc

    def devices(self, lib_dir: Optional[str] = None) -> dict:
        """Which runtime the worker finds, the device count and each device's memory."""
        return self._call(P.Devices(lib_dir), start=True)

    def ensure_open(self) -> None:
        """Restart the worker and reload the model after a crash."""
        if not self._alive() and self._open_args is not None:
            a, pinned = self._open_args, self._pinned
            self.open(a["bmodel"], a["devids"], a["lib_dir"])
            if pinned:
                self.pin_prefix(pinned)

    def pin_prefix(self, ids: Sequence[int]) -> dict:
        """Keep the KV rows of a shared prefix on the device for every later
        prompt that starts with it ([] drops it).  Returns tokens, seconds
        and reused_tokens.  A restarted worker pins it again."""
        result = self._call(P.PinPrefix(list(ids)))
        self._pinned = list(ids)
        return result

    def generate(
        self, ids: Sequence[int], max_new_tokens: int = 256, stop_ids: Sequence[int] = (),
        sampling: Optional[dict] = None, reuse: Union[bool, str] = True,
        image: Optional[ImageInputs] = None, image_pos: Optional[int] = None,
        lookup: Union[bool, str] = True,
    ) -> Iterator[Union[TokenEvent, DoneEvent]]:
        """Stream one answer (greedy, or sampled with `sampling`: see
        Engine.generate; `image`/`image_pos` for vision bmodels, `lookup`
        for prompt-lookup decoding, likewise).
        Abandoning the iterator early cancels the generation and drops its
        remaining events."""
        self.ensure_open()
        if not self._alive():
            raise TpuchatError("no model is open")
        request = P.Generate(list(ids), max_new_tokens, list(stop_ids), sampling, reuse, image, image_pos,
                             lookup=lookup)
        by_digest = image is not None and image.digest == self._worker_image
        if by_digest:  # the worker holds it: do not send megabytes of pixels again
            request.image = dataclasses.replace(image, pixel_values=b"")
        self._send_generate(request)
        finished = False
        arrivals = []  # when this process got each token: the host path ends here
        try:
            while True:
                ev = self._recv()
                if isinstance(ev, P.Failed):
                    finished = True
                    if image is not None:
                        self._worker_image = None  # the image may not have been set
                    if by_digest and ev.kind == "ImageNotHeld":
                        # It forgot the image (reopened, switched bmodels): send the pixels.
                        by_digest = False
                        request.image = image
                        self._send_generate(request)
                        finished = False
                        continue
                    raise ev.exception()
                if not isinstance(ev, (P.Token, P.Done)) or ev.gen != request.gen:
                    continue  # left over from an abandoned generation
                if isinstance(ev, P.Token):
                    arrivals.append(time.monotonic())
                    yield TokenEvent(ev.id)
                else:
                    finished = True
                    _whole_host_path(ev.stats, arrivals)
                    yield DoneEvent(ev.stats)
                    return
        finally:
            if not finished and self._alive():
                try:
                    self._send(P.Cancel())
                except TpuchatError:
                    pass

    def _send_generate(self, request: P.Generate) -> None:
        self._gen += 1
        request.gen = self._gen
        self._send(request)
        if request.image is not None:
            self._worker_image = request.image.digest

    def forced_picks(self, ids: Sequence[int], continuation: Sequence[int]) -> list:
        """The model's greedy pick after the prompt and after each forced token."""
        return self._call(P.ForcedPicks(list(ids), list(continuation)))

    def image_states(self) -> list:
        """The worker's held image states (vit output) as floats."""
        return self._call(P.ImageStates())

    def cancel(self) -> None:
        """Stop the running generation within one token (a done event follows)."""
        if self._alive():
            self._send(P.Cancel())

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    def close(self) -> None:
        if self._alive():
            try:
                self._conn.send(P.Close())
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
