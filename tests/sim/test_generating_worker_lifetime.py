"""A worker in the middle of a generation on the simulator ends with its parent
(tests/unit/test_worker_lifetime.py: idle and inside a long native call)."""

import os
import signal

import pytest

from tests.unit.test_worker_lifetime import gone, kill_parent_and_check, start_parent


@pytest.mark.sim
def test_a_generating_worker_ends_when_its_parent_is_killed(tmp_path, sim_lib, build):
    from tests.fixtures import models

    build("qwen2-bf16")
    model = str(models.bmodel_path("qwen2-bf16"))
    parent, worker = start_parent(tmp_path, f"""
        import time
        from tpuchat.runtime.client import EngineClient

        client = EngineClient({str(tmp_path / 'engine.log')!r})
        client.open({model!r}, [0], {sim_lib!r})
        for i, ev in enumerate(client.generate(list(range(5, 40)), 100000)):
            if i == 1:
                print(client.pid, flush=True)
    """)
    try:
        kill_parent_and_check(parent, worker)
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGKILL)
