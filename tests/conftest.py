"""Shared fixtures: the BM1684X simulator and the tiny compiled bmodels.

Simulator tests use the real runtime (Sophgo's libbmrt over the chip's C
model) on bmodels compiled by the real llm_convert; both are installed and
built on first use into the user cache, so a second run starts at once.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests that need the simulator or a compiled bmodel are marked `sim` by the fixtures they use,
# so `pytest -m "not sim"` is the fast lane (seconds to a few minutes, no compiler) and
# `pytest -m sim` the rest; .ci/run runs the fast lane first.
SIM_FIXTURES = {"sim_lib", "build", "open_variant"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SIM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sim)


@pytest.fixture(scope="session")
def sim_lib():
    """Directory of the simulator runtime, installed on first use."""
    from tpuchat.runtime import simulator

    return str(simulator.install(quiet=True))


@pytest.fixture(scope="session")
def build():
    """build(variant) -> the variant's cache dir (compiled on first use)."""
    from tests.fixtures import models

    return models.variant_dir


@pytest.fixture
def engine_log(tmp_path):
    return tmp_path / "engine.log"


@pytest.fixture
def open_variant(sim_lib, build, engine_log):
    """open_variant(name) -> (engine client, description) for a built fixture; closed afterwards."""
    from tests.fixtures import models
    from tpuchat.runtime.client import EngineClient

    clients = []

    def _open(variant):
        build(variant)
        c = EngineClient(engine_log)
        clients.append(c)
        desc = c.open(str(models.bmodel_path(variant)), [0], sim_lib)
        return c, desc

    yield _open
    for c in clients:
        c.close()
