"""Multi-device bmodels on the simulator, through fake devices (tests/fakedev/fakedev.c).

The C model has one device; the preload presents N and moves data between
them for real (one shared simulated memory).  With it the 2-device fixture
(`qwen2-2dev`, TPU-MLIR 1.24 llm_convert --num_device 2) loads and runs:
- its prefill gives transformers' first token, for `--devid 0,1` and for
  `--devid 2,3` out of 4 devices;
- its decode nets cannot be right: their last step reads nine tensors of the
  layer's attention that no step computes (test_decode_net_reads_tensors_nobody_computes
  shows the output changes with their contents), so tpuchat refuses the bmodel
  at open, in one line, instead of answering wrongly.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import models
from tpuchat.runtime import bmodel_nets
from tpuchat.runtime.binding import plan_net

pytestmark = pytest.mark.sim

VARIANT = "qwen2-2dev"
HERE = Path(__file__).resolve().parents[1] / "fakedev"
SOURCES = [HERE / "fakedev.c", HERE / "unproduced.c", HERE.parent.parent / "native" / "bmrt_api.h"]
PROMPT = [1, 5, 9, 77, 200, 31, 8, 400, 12]


@pytest.fixture(scope="module")
def fakedev(tmp_path_factory):
    """Build the preload and the reproduction with the system compiler (cached by source hash)."""
    from tpuchat.compiler import toolchain

    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
    out = toolchain.cache_root() / "fakedev" / key
    lib, repro = out / "libfakedev.so", out / "unproduced"
    if not (lib.exists() and repro.exists()):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(lib), str(HERE / "fakedev.c"),
                        "-ldl", "-lpthread"], check=True)
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(repro), str(HERE / "unproduced.c"), "-ldl"], check=True)
    return {"lib": lib, "repro": repro}


@pytest.fixture(scope="module")
def two_dev(build):
    build(VARIANT)
    return models.bmodel_path(VARIANT)


def _env(fakedev, devices, tmp_path, **extra):
    env = dict(os.environ, LD_PRELOAD=str(fakedev["lib"]), TPUCHAT_FAKE_DEVICES=str(devices),
               TPUCHAT_FAKEDEV_TRACE=str(tmp_path / "trace.txt"), **extra)
    return env


@pytest.mark.parametrize("net, unfed_expected", [("block_0", 0), ("block_cache_0", 9), ("block_cache_1", 9)])
def test_decode_net_reads_tensors_nobody_computes(fakedev, two_dev, sim_lib, tmp_path, net, unfed_expected):
    """The minimal reproduction: the same net run three times with the same
    contents in every input it describes, except those no step of it computes.
    A right net's output cannot change; the 2-device decode nets' does."""
    desc = bmodel_nets.read(two_dev).net(net)
    plan = plan_net(desc, 2)
    ties = [f"{i}:{x['tied_to_output']}" for i, x in enumerate(plan["inputs"]) if x["tied_to_output"] >= 0]
    unfed = [str(i) for i, x in enumerate(plan["inputs"])
             if x["role"] == "passthrough" and x["tied_to_output"] < 0]
    assert len(unfed) == unfed_expected
    r = subprocess.run([str(fakedev["repro"]), str(two_dev), net, ",".join(ties) or "-", ",".join(unfed) or "-"],
                       cwd=sim_lib, env=_env(fakedev, 2, tmp_path, LD_LIBRARY_PATH=sim_lib),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("changed ")][-1]
    a, b, total = int(line.split()[1]), int(line.split()[2]), int(line.split()[4])
    assert total == desc.stages[0].outputs[0].shape[1] * 128  # the hidden states out
    if unfed_expected:
        assert a > 0 and b > 0, line  # the output follows memory nobody fills
    else:
        assert a == b == 0, line  # fully described: deterministic


def test_cli_refuses_the_2dev_bmodel_in_one_line(fakedev, two_dev, sim_lib, tmp_path):
    r = subprocess.run([sys.executable, "-m", "tpuchat.cli", "run", "--model", str(two_dev), "--devid", "0,1",
                        "--libsophon", sim_lib, "-n", "4", "--no-template", "hello"],
                       env=_env(fakedev, 2, tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode != 0
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1, r.stderr
    assert "cannot give right answers" in err[0] and "block_cache_0" in err[0] and "9 tensors" in err[0]
    # The shim asked for exactly the devices given.
    trace = (tmp_path / "trace.txt").read_text()
    assert "bm_dev_request(0) -> 0" in trace and "bm_dev_request(1) -> 0" in trace


@pytest.mark.parametrize("devices, devids", [(2, [0, 1]), (4, [2, 3])])
def test_prefill_across_devices_gives_transformers_first_token(fakedev, two_dev, sim_lib, tmp_path, devices, devids,
                                                                capsys):
    """With the check switched off (TPUCHAT_MULTIDEV_UNCHECKED=1, a diagnostic)
    the multi-device run path prefills on both devices, exchanges the partial
    sums between them and gives transformers' first token; the hidden states
    stay where the plan says."""
    from tpuchat.runtime.client import EngineClient, TokenEvent

    ref = models.reference_greedy(VARIANT, [PROMPT], 2)[0]
    saved = dict(os.environ)
    os.environ.update(_env(fakedev, devices, tmp_path, TPUCHAT_MULTIDEV_UNCHECKED="1"))
    try:
        with EngineClient(tmp_path / "engine.log") as c:
            desc = c.open(str(two_dev), devids, sim_lib)
            assert desc.num_device == 2
            # each device holds half the KV heads and half the cache, and `info` says so
            assert [(d.devid, d.kv_heads, d.kv_cache_bytes) for d in desc.devices] == \
                [(i, desc.kv_heads // 2, desc.kv_cache_bytes // 2) for i in devids]
            got = [e.id for e in c.generate(PROMPT, max_new_tokens=1) if isinstance(e, TokenEvent)]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert got == ref[:1]
    from tpuchat.tables import print_model_table

    print_model_table(desc)
    table = capsys.readouterr().out
    assert f"device {devids[0]}" in table and f"KV heads 0 of {desc.kv_heads}" in table
    assert f"device {devids[1]}" in table and f"KV heads 1 of {desc.kv_heads}" in table
    trace = (tmp_path / "trace.txt").read_text().splitlines()
    requested = [x for x in trace if x.startswith("bm_dev_request(")]
    assert any(x.startswith(f"bm_dev_request({devids[0]}) -> 0") for x in requested)
    assert any(x.startswith(f"bm_dev_request({devids[1]}) -> 0") for x in requested)
    # The runtime's all-reduce: each layer's partial sums cross both ways.
    p2p = [x for x in trace if x.startswith("p2p ")]
    assert len(p2p) == 2 * 2 and all(x.endswith("-> 0") for x in p2p)
