"""The engine worker: a child process that owns the device.

Why a process: libbmrt and the simulator write to file descriptor 1 (which
would tear a full-screen UI or corrupt JSON output), and a damaged bmodel or
a hung chip can abort() inside libbmrt.  The child's stdout/stderr go to a
log file; the parent talks to it over a socket with the small pickled
requests and events of protocol.py.  The worker ends with its parent (see
_die_with_parent).
"""

import os
import sys
import time
import traceback

from . import protocol as P


class _Worker:
    def __init__(self, conn):
        self.conn = conn
        self.engine = None
        self.pending = []  # requests that arrived while generating

    def next_request(self):
        if self.pending:
            return self.pending.pop(0)
        return self.conn.recv()

    def _need_engine(self):
        from ..errors import TpuchatError

        if self.engine is None:
            raise TpuchatError("no model is open")
        return self.engine

    def open(self, req: P.Open) -> P.Opened:
        from .engine import Engine

        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.engine = Engine(req.bmodel, req.devids or [0], req.lib_dir, req.share_refused)
        rt = self.engine.runtime
        desc = self.engine.desc
        desc.runtime = P.RuntimeInfo(str(rt.path), rt.kind, rt.version or "")
        desc.family = self.engine.family_info()
        return P.Opened(desc)

    def generate(self, req: P.Generate) -> P.Done:
        engine = self._need_engine()
        cancelled = False

        def should_stop():
            nonlocal cancelled
            while self.conn.poll(0):
                r = self.conn.recv()
                if isinstance(r, P.Cancel):
                    cancelled = True
                else:
                    self.pending.append(r)
            return cancelled

        for tok in engine.generate(req.ids, req.max_new_tokens, req.stop_ids, should_stop, req.sampling,
                                   req.reuse, req.image, req.image_pos, req.lookup):
            self.conn.send(P.Token(req.gen, tok))
        return P.Done(req.gen, engine.stats)

    def serve(self) -> None:
        from ..errors import TpuchatError

        handlers = {
            P.Open: self.open,
            P.Generate: self.generate,
            P.ForcedPicks: lambda r: P.Reply(self._need_engine().forced_picks(r.ids, r.continuation)),
            P.PinPrefix: lambda r: P.Reply(self._need_engine().pin_prefix(r.ids)),
            P.ImageStates: lambda r: P.Reply(self._need_engine().image_states()),
            P.Devices: lambda r: P.Reply(_devices(r.lib_dir)),
            P.Cancel: lambda r: None,  # nothing running
        }
        while True:
            try:
                req = self.next_request()
            except (EOFError, OSError):
                break
            if isinstance(req, P.Close):
                break
            try:
                handler = handlers.get(type(req))
                if handler is None:
                    raise TpuchatError(f"unknown request {req!r}")
                answer = handler(req)
                if answer is not None:
                    self.conn.send(answer)
            except TpuchatError as e:
                self.conn.send(P.Failed(type(e).__name__, str(e)))
            except Exception as e:  # a bug: report it, keep serving
                traceback.print_exc()
                self.conn.send(P.Failed("TpuchatError", f"internal error: {type(e).__name__}: {e}"))
        if self.engine is not None:
            self.engine.close()


def _serve(conn) -> None:
    _Worker(conn).serve()


def _devices(lib_dir):
    """The runtime this process would use, and its devices' memory."""
    from .binding import device_count, device_stat, load_runtime
    from .libfind import find_runtime

    loc = find_runtime(lib_dir)
    load_runtime(str(loc.path))
    n = device_count()
    stats = [vars(device_stat(i)) for i in range(n)]
    return {"path": str(loc.path), "kind": loc.kind, "source": loc.source, "version": loc.version,
            "count": n, "devices": stats}


def _die_with_parent(parent_pid: int, period_s: float = 0.25) -> None:
    """End this process when its parent is gone, even in the middle of a long
    runtime call (a killed client must not leave its worker computing).

    A thread that watches getppid(), not prctl(PR_SET_PDEATHSIG): that signal
    fires when the parent *thread* that started the worker ends, and front
    ends start workers from short-lived threads.  cffi calls release the GIL,
    so the watcher runs while the main thread is inside libbmrt."""
    import signal
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    from multiprocessing.connection import Connection

    fd = int(sys.argv[1])
    if len(sys.argv) > 2:
        _die_with_parent(int(sys.argv[2]))
    conn = Connection(fd)
    _serve(conn)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: runtime threads may linger


if __name__ == "__main__":
    main()
