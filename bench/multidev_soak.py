"""Open, prefill, decode and close a multi-device bmodel many times on fake devices; count crashes.

    python bench/multidev_soak.py [RUNS]        # default 50, fixture qwen2-2dev, --devid 0,1

Each run starts a fresh engine worker (the path `tpuchat run` takes) with the
fake-device preload (tests/fakedev) and TPUCHAT_MULTIDEV_UNCHECKED=1 (the
2-device fixture's decode nets are refused otherwise; their tokens are wrong,
this only counts crashes), generates 4 tokens and closes.  Prints one line per
run and a summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    import tempfile

    from tests.fixtures import models
    from tests.sim.test_multidev_run import PROMPT
    from tpuchat.errors import TpuchatError
    from tpuchat.runtime import simulator
    from tpuchat.runtime.client import EngineClient, TokenEvent



    lib = str(simulator.install(quiet=True))
    tmp = Path(tempfile.mkdtemp(prefix="tpuchat-soak-"))
    so = tmp / "libfakedev.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(so), str(ROOT / "tests/fakedev/fakedev.c"),
                    "-ldl", "-lpthread"], check=True)
    os.environ.update(LD_PRELOAD=str(so), TPUCHAT_FAKE_DEVICES="2", TPUCHAT_MULTIDEV_UNCHECKED="1")
    bmodel = str(models.bmodel_path("qwen2-2dev"))
    crashes, first = 0, set()
    t0 = time.perf_counter()
    for i in range(runs):
        try:
            with EngineClient(tmp / "engine.log") as c:
                c.open(bmodel, [0, 1], lib)
                got = [e.id for e in c.generate(PROMPT, max_new_tokens=4) if isinstance(e, TokenEvent)]
            first.add(got[0])
            print(f"run {i + 1}: ok {got}", flush=True)
        except TpuchatError as e:
            crashes += 1
            print(f"run {i + 1}: FAILED {e}", flush=True)
    print(f"{runs} runs, {crashes} failed, first tokens seen {sorted(first)}, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
