"""A worker that stops answering is killed and reported, not waited on forever."""

import signal
import os
import time

import pytest

from tests.fixtures import models
from tpuchat.errors import EngineCrashed
from tpuchat.runtime.client import EngineClient

pytestmark = pytest.mark.sim


def test_a_stalled_engine_is_stopped_and_reported(sim_lib, build, tmp_path):
    build("qwen2-bf16")
    client = EngineClient(tmp_path / "log", stall_timeout=5)
    try:
        client.open(str(models.bmodel_path("qwen2-bf16")), [0], sim_lib)
        pid = client.pid
        os.kill(pid, signal.SIGSTOP)  # a frozen worker: alive, silent
        t0 = time.monotonic()
        with pytest.raises(EngineCrashed, match="stopped responding for 5 s"):
            list(client.generate(list(range(5, 20)), 2))
        assert time.monotonic() - t0 < 30
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # it was killed, not left behind
        client.stall_timeout = 300  # loading the model again takes longer than 5 s
        client.ensure_open()  # and the next request gets a fresh worker
        assert len(list(client.generate(list(range(5, 20)), 2))) == 3
    finally:
        client.close()
