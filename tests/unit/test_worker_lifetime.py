"""The engine worker ends with its parent: a client killed by SIGKILL (no
chance to close anything) must not leave its worker holding the device or
computing, also when it dies in the middle of a generation."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for a reaper that does not reap (containers)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def start_parent(tmp_path, body: str) -> "tuple[subprocess.Popen, int]":
    """A python process that starts a worker (as `body` says), prints its pid and waits to be killed."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(body))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=str(ROOT),
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = parent.stdout.readline().decode().strip()
    assert line.isdigit(), f"the parent did not start a worker: {line!r}"
    return parent, int(line)


def kill_parent_and_check(parent: subprocess.Popen, worker: int, within: float = 10) -> None:
    assert not gone(worker), "the worker should be running while its parent lives"
    parent.kill()
    parent.wait()
    t0 = time.monotonic()
    assert wait_gone(worker, within), "the worker outlived its parent"
    print(f"[lifetime] worker gone {time.monotonic() - t0:.2f} s after its parent was killed", file=sys.stderr)


STUCK_CHILD = (
    "import ctypes, os, sys\n"
    "from tpuchat.runtime.worker import _die_with_parent\n"
    "_die_with_parent(int(sys.argv[1]))\n"
    "print(os.getpid(), flush=True)\n"
    "ctypes.CDLL(None).sleep(60)\n"
)


def test_a_worker_inside_a_long_native_call_ends_when_its_parent_is_killed(tmp_path):
    """The worker's watch in a process whose main thread sits in one long C call (as in a
    libbmrt load or prefill: cffi, like ctypes, lets other threads run meanwhile).  Without
    the watch this process would live on for the whole minute."""
    parent, worker = start_parent(tmp_path, f"""
        import os, subprocess, sys, time

        child = subprocess.Popen([sys.executable, "-c", {STUCK_CHILD!r}, str(os.getpid())],
                                 stdout=subprocess.PIPE)
        print(child.stdout.readline().decode().strip(), flush=True)
        time.sleep(120)
    """)
    try:
        time.sleep(0.5)  # well inside sleep(60)
        kill_parent_and_check(parent, worker, within=2)
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_an_idle_worker_ends_when_its_parent_is_killed(tmp_path):
    """Started from a thread that then ends (as the chat UI does): the worker stays while the
    parent lives (so not PR_SET_PDEATHSIG, which fires on the thread's end) and goes with it."""
    parent, worker = start_parent(tmp_path, f"""
        import sys, threading, time
        from tpuchat.runtime.client import EngineClient

        client = EngineClient({str(tmp_path / 'engine.log')!r})
        t = threading.Thread(target=client._start)
        t.start()
        t.join()
        print(client.pid, flush=True)
        time.sleep(120)
    """)
    try:
        time.sleep(1.0)  # the starting thread is long gone
        kill_parent_and_check(parent, worker)
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGKILL)
