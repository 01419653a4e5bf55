"""Shared fixtures: the BM1684X simulator and the tiny compiled bmodels.

Simulator tests use the real runtime (Sophgo's libbmrt over the chip's C
model) on bmodels compiled by the real llm_convert; both are installed and
built on first use into the user cache, so a second run starts at once.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# tests/unit is the fast lane (no simulator, no compiler: about two minutes); tests/sim needs the
# simulator or a compiled bmodel.  .ci/run runs the fast lane first.  Every test under tests/sim is
# marked `sim` (so `-m sim` / `-m "not sim"` select the same sets), and a unit test that asks for
# the simulator is an error: it belongs in tests/sim.
SIM_FIXTURES = {"sim_lib", "build", "open_variant"}
SIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sim") + os.sep


def pytest_collection_modifyitems(config, items):
    for item in items:
        in_sim = str(item.fspath).startswith(SIM_DIR)
        if in_sim:
            item.add_marker(pytest.mark.sim)
        elif SIM_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} uses the simulator: move it under tests/sim")


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
