"""The engine worker: a child process that owns the device.

Why a process: libbmrt and the simulator write to file descriptor 1 (which
would tear a full-screen UI or corrupt JSON output), and a damaged bmodel or
a hung chip can abort() inside libbmrt.  The child's stdout/stderr go to a
log file; the parent talks to it over a socket with small pickled messages.

Requests (parent -> child):  ("open", {...}), ("generate", {...}),
("pin_prefix", {...}), ("cancel", {}), ("close", {}), ("image_states", {}).  A generate request may
carry an ImageInputs whose pixel_values are empty when the worker already
holds that image (same digest).
Events (child -> parent): ("opened", desc_dict), ("token", id),
("done", stats_dict), ("error", (kind, message)).
"""

import os
import sys
import traceback


def _serve(conn) -> None:
    from ..errors import TpuchatError
    from .engine import Engine

    engine = None
    pending = []  # requests that arrived while generating

    def next_request():
        if pending:
            return pending.pop(0)
        return conn.recv()

    while True:
        try:
            op, args = next_request()
        except (EOFError, OSError):
            break
        try:
            if op == "open":
                if engine is not None:
                    engine.close()
                    engine = None
                engine = Engine(args["bmodel"], args.get("devids") or [0], args.get("lib_dir"))
                desc = engine.desc.to_dict()
                desc["runtime"] = {
                    "path": str(engine.runtime.path),
                    "kind": engine.runtime.kind,
                    "version": engine.runtime.version,
                }
                family = engine.family_info()
                if family is not None:
                    desc["family"] = family
                conn.send(("opened", desc))
            elif op == "generate":
                if engine is None:
                    raise TpuchatError("no model is open")
                cancelled = False

                def should_stop():
                    nonlocal cancelled
                    while conn.poll(0):
                        req = conn.recv()
                        if req[0] == "cancel":
                            cancelled = True
                        else:
                            pending.append(req)
                    return cancelled

                gen = args.get("gen", 0)  # tags events so the parent can drop stale ones
                for tok in engine.generate(
                    args["ids"], args.get("max_new_tokens", 256), args.get("stop_ids", ()), should_stop,
                    args.get("sampling"), args.get("reuse", True), args.get("image"), args.get("image_pos"),
                ):
                    conn.send(("token", (gen, tok)))
                conn.send(("done", (gen, engine.stats.to_dict())))
            elif op == "forced_picks":
                if engine is None:
                    raise TpuchatError("no model is open")
                conn.send(("picks", engine.forced_picks(args["ids"], args["continuation"])))
            elif op == "pin_prefix":
                if engine is None:
                    raise TpuchatError("no model is open")
                conn.send(("pinned", engine.pin_prefix(args["ids"])))
            elif op == "image_states":
                if engine is None:
                    raise TpuchatError("no model is open")
                conn.send(("image_states", engine.image_states()))
            elif op == "devices":
                conn.send(("devices", _devices(args.get("lib_dir"))))
            elif op == "cancel":
                pass  # nothing running
            elif op == "close":
                break
            else:
                raise TpuchatError(f"unknown request {op!r}")
        except TpuchatError as e:
            conn.send(("error", (type(e).__name__, str(e))))
        except Exception as e:  # a bug: report it, keep serving
            traceback.print_exc()
            conn.send(("error", ("TpuchatError", f"internal error: {type(e).__name__}: {e}")))
    if engine is not None:
        engine.close()


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


def main() -> None:
    from multiprocessing.connection import Connection

    fd = int(sys.argv[1])
    conn = Connection(fd)
    _serve(conn)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: runtime threads may linger


if __name__ == "__main__":
    main()
