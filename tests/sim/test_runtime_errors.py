"""Bad input gives one clear line and a non-zero exit, never a hang or a
crash of the caller; crashes inside libbmrt are contained in the worker."""

import os
import signal
import struct
import subprocess
import sys

import pytest

from tests.fixtures import models
from tpuchat.errors import DeviceError, EngineCrashed, ModelError, RuntimeNotFound
from tpuchat.runtime.client import DoneEvent, EngineClient

pytestmark = pytest.mark.sim


@pytest.fixture
def good(build):
    build("qwen2-bf16")
    return models.bmodel_path("qwen2-bf16")


def damaged(good, tmp_path, name, edit):
    data = bytearray(good.read_bytes())
    edit(data)
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def open_error(path, lib, log, devids=(0,)):
    with EngineClient(log) as c:
        c.open(str(path), list(devids), lib)


def test_missing_file(sim_lib, tmp_path):
    with pytest.raises(ModelError, match="bmodel not found"):
        open_error(tmp_path / "nope.bmodel", sim_lib, tmp_path / "log")


def test_empty_file(sim_lib, tmp_path):
    p = tmp_path / "empty.bmodel"
    p.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        open_error(p, sim_lib, tmp_path / "log")


def test_random_bytes(sim_lib, tmp_path):
    p = tmp_path / "random.bmodel"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="is not a bmodel"):
        open_error(p, sim_lib, tmp_path / "log")


def test_truncated_file(sim_lib, good, tmp_path):
    p = tmp_path / "cut.bmodel"
    p.write_bytes(good.read_bytes()[: 200_000])
    with pytest.raises(ModelError, match="truncated"):
        open_error(p, sim_lib, tmp_path / "log")


def test_damaged_net_descriptions_are_refused_by_the_runtime(sim_lib, good, tmp_path):
    def edit(b):
        _, hs, fs, _ = struct.unpack("<IIIQ", bytes(b[:20]))
        for i in range(hs + 200, hs + fs - 200, 7):
            b[i] ^= 0x5A

    p = damaged(good, tmp_path, "fb.bmodel", edit)
    with pytest.raises(ModelError, match="could not load"):
        open_error(p, sim_lib, tmp_path / "log")


def test_bmodel_for_another_chip(sim_lib, build, tmp_path):
    build("qwen2-bm1688")
    with pytest.raises(ModelError, match="compiled for BM1688"):
        open_error(models.bmodel_path("qwen2-bm1688"), sim_lib, tmp_path / "log")


def test_bmodel_without_llm_nets(sim_lib, tmp_path):
    from tpuchat.compiler import toolchain

    vision = next(toolchain.ensure().venv.glob("lib/python3.10/site-packages/tpu_mlir/python/tools/soc_infer/demo/*/compilation.bmodel"))
    with pytest.raises(ModelError, match="not an LLM bmodel"):
        open_error(vision, sim_lib, tmp_path / "log")


def test_no_runtime_library(good, tmp_path):
    empty = tmp_path / "lib"
    empty.mkdir()
    with pytest.raises(RuntimeNotFound, match="no libbmrt/libbmlib"):
        open_error(good, str(empty), tmp_path / "log")


def test_runtime_library_that_does_not_load(good, tmp_path):
    fake = tmp_path / "lib"
    fake.mkdir()
    for n in ("libbmlib.so.0", "libbmrt.so.1.0"):
        (fake / n).write_bytes(b"not an ELF file")
    with pytest.raises(RuntimeNotFound, match="cannot load libbmlib"):
        open_error(good, str(fake), tmp_path / "log")


def test_device_id_that_does_not_exist(sim_lib, good, tmp_path):
    # On the simulator, requesting device 1 would abort inside libbmlib.
    with pytest.raises(DeviceError, match="device 1 does not exist"):
        open_error(good, sim_lib, tmp_path / "log", devids=[1])


def test_device_count_mismatch(sim_lib, good, tmp_path):
    with pytest.raises(DeviceError, match="does not exist|compiled for 1 device"):
        open_error(good, sim_lib, tmp_path / "log", devids=[0, 1])


def test_crash_inside_the_runtime_is_contained(sim_lib, good, tmp_path):
    """Damaged kernels/weights load, then crash the simulator when run, or
    hang it (which bytes get damaged decides): either way the caller gets a
    one-line EngineCrashed, never a hang, and the next request works."""

    def edit(b):
        _, hs, fs, _ = struct.unpack("<IIIQ", bytes(b[:20]))
        for i in range(hs + fs + 1000, len(b), 997):
            b[i] ^= 0xFF

    bad = damaged(good, tmp_path, "bin.bmodel", edit)
    client = EngineClient(tmp_path / "log", stall_timeout=60)
    try:
        client.open(str(bad), [0], sim_lib)
        with pytest.raises(EngineCrashed, match="killed by SIG|stopped responding") as err:
            list(client.generate(list(range(5, 20)), 3))
        assert err.value.log_tail  # the caller gets the end of the log
        # The next request starts a fresh worker.
        client.open(str(good), [0], sim_lib)
        events = list(client.generate(list(range(5, 20)), 2))
        assert isinstance(events[-1], DoneEvent) and len(events) == 3
    finally:
        client.close()


def test_worker_killed_mid_answer(sim_lib, good, tmp_path):
    client = EngineClient(tmp_path / "log")
    try:
        client.open(str(good), [0], sim_lib)
        got = []
        with pytest.raises(EngineCrashed, match="SIGKILL"):
            for ev in client.generate(list(range(5, 25)), 50):
                got.append(ev)
                if len(got) == 2:
                    os.kill(client.pid, signal.SIGKILL)
        assert len(got) >= 2
        client.ensure_open()  # reloads the same model in a new worker
        assert len(list(client.generate(list(range(5, 25)), 2))) == 3
    finally:
        client.close()


def test_cancel_stops_within_one_token(sim_lib, good, tmp_path):
    client = EngineClient(tmp_path / "log")
    try:
        client.open(str(good), [0], sim_lib)
        tokens = 0
        for ev in client.generate(list(range(5, 25)), 200):
            if isinstance(ev, DoneEvent):
                assert ev.stats.stop_reason == "cancelled"
                break
            tokens += 1
            if tokens == 2:
                client.cancel()
        assert tokens <= 3
    finally:
        client.close()


# -- the same through the command line ----------------------------------------


def tpuchat(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tpuchat.cli", *args], capture_output=True, text=True,
                          timeout=300, env=e)


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("missing", 4, "bmodel not found"),
        ("random", 4, "is not a bmodel"),
        ("devid", 5, "device 7 does not exist"),
        ("baddevid", 1, "bad device id list"),
        ("noruntime", 3, "no libbmrt/libbmlib"),
    ],
)
def test_cli_errors_are_one_line(case, code, message, sim_lib, good, tmp_path):
    rnd = tmp_path / "r.bmodel"
    rnd.write_bytes(os.urandom(100))
    args = {
        "missing": ["info", str(tmp_path / "x.bmodel")],
        "random": ["run", "--model", str(rnd), "hi"],
        "devid": ["info", str(good), "--devid", "7"],
        "baddevid": ["info", str(good), "--devid", "a,b"],
        "noruntime": ["info", str(good), "--libsophon", str(tmp_path)],
    }[case]
    r = tpuchat(*args, env={"TPUCHAT_STATE": str(tmp_path)})
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tpuchat: error: "), r.stderr
    assert "Traceback" not in r.stderr
