"""Load and switch times of a family of bmodels of the same weights.

    python bench/family_switch.py A.bmodel B.bmodel [--libsophon DIR] [--rounds 5] [--share]

Prints, for each bmodel, the plain load time (tpc_open: runtime + load +
KV cache set-up) and the memory the runtime says it needs; then the family's
open time, the time of each switch back and forth, and the device memory in
use as the driver reports it (the simulator reports 0).  --share asks for
the single weight area (bmrt_load_bmodel_with_mem); the shim checks where
the runtime put the weights and falls back to whole loads when they overlap
(the 1.30.2 runtime does that), so the open time then includes the refused
shared load.  libbmrt's chatter on stdout is sent to /dev/null while timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time


@contextlib.contextmanager
def quiet_fd1():
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bmodels", nargs="+")
    ap.add_argument("--libsophon")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--share", action="store_true")
    ap.add_argument("--devid", type=int, default=0)
    args = ap.parse_args(argv)

    from tpuchat.runtime.binding import Family, Model, bmodel_memory, device_stat, load_runtime
    from tpuchat.runtime.libfind import find_runtime
    from tpuchat.runtime.weights import check_same_weights

    t = time.perf_counter()
    check_same_weights(args.bmodels)
    check_s = time.perf_counter() - t
    load_runtime(str(find_runtime(args.libsophon).path))
    report = {"weight_check_s": check_s, "members": [], "switch_s": []}
    with quiet_fd1():
        for p in args.bmodels:
            mem = vars(bmodel_memory(p))
            loads = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                m = Model(p, [args.devid])
                loads.append(time.perf_counter() - t)
                used = device_stat(args.devid).mem_used_mb
                m.close()
            report["members"].append({"bmodel": os.path.basename(p), "plain_load_s": statistics.median(loads),
                                      "device_mem_used_mb": used, **mem})
        t = time.perf_counter()
        fam = Family(args.bmodels, [args.devid], 0, args.share)
        report["family_open_s"] = time.perf_counter() - t
        report["shared_weights"] = fam.shared
        report["weight_area_bytes"] = fam.weight_bytes
        report["share_note"] = fam.share_note
        for r in range(args.rounds * len(args.bmodels)):
            fam.switch((r + 1) % len(args.bmodels))
            report["switch_s"].append(fam.last_switch_s)
        report["family_device_mem_used_mb"] = device_stat(args.devid).mem_used_mb
        fam.close()
    sw = report["switch_s"]
    print(json.dumps(report, indent=2))
    print(f"weight check {check_s * 1e3:.1f} ms; family open {report['family_open_s']:.3f} s; "
          f"switch median {statistics.median(sw):.3f} s (min {min(sw):.3f}, max {max(sw):.3f}); "
          f"shared weights: {report['shared_weights']} {report['share_note']}", file=sys.stderr)
    for m in report["members"]:
        print(f"{m['bmodel']}: plain load {m['plain_load_s']:.3f} s, weights {m['weight_bytes']} B, "
              f"other {m['instruction_bytes'] + m['neuron_bytes'] + m['io_bytes']} B", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
