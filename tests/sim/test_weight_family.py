"""Several bmodels of the same weights (--model a,b), on the simulator.

qwen2-s128 and qwen2-bf16 are the same tiny Qwen2 weights compiled with KV
lengths 128 and 256; qwen2-w8bf16 (other quantisation) and qwen2-f16 (other
bytes, same sizes) must be refused."""

import pytest

from tests.fixtures import models
from tests.fixtures.compare import assert_follows_reference, generate as gen
from tpuchat.errors import ModelError, PromptTooLong
from tpuchat.runtime.client import EngineClient

pytestmark = pytest.mark.sim

SHORT, LONG = "qwen2-s128", "qwen2-bf16"
PROMPT = [5, 17, 33, 99, 101, 7] * 4  # 24 tokens; transformers' top-2 margins > 0.03 for 20 steps
LONG_PROMPT = PROMPT + list(range(300, 392))  # 116 tokens


def safe_prefix(ref: dict, tol: float = 0.03) -> int:
    """Steps before transformers' first near-tie (bf16 may flip those)."""
    return next((i for i, m in enumerate(ref["margins"]) if m < tol), len(ref["margins"]))


def pair(*names):
    return ",".join(str(models.bmodel_path(n)) for n in names)


@pytest.fixture
def family(sim_lib, build, engine_log, tmp_path, monkeypatch):
    build(SHORT)
    build(LONG)
    monkeypatch.setenv("TPUCHAT_STATE", str(tmp_path / "state"))  # no verdict from earlier runs
    c = EngineClient(engine_log)
    desc = c.open(pair(LONG, SHORT), [0], sim_lib)  # any order: sorted by KV length
    yield c, desc
    c.close()


def test_shortest_member_that_fits_answers_and_tokens_equal_transformers(family, open_variant):
    c, desc = family
    fam = desc.family
    assert [m["kv_len"] for m in fam["members"]] == [128, 256]
    assert desc.kv_len == 256  # the family's limit is its longest member
    ref = models.reference(SHORT, [PROMPT], 20)[0]
    assert safe_prefix(ref) == 20

    short, st = gen(c, PROMPT, 20)  # 24 + 20 fits 128
    assert st.bmodel == models.bmodel_path(SHORT).name
    assert short == ref["ids"]

    # 116 + 16 needs the 256 one: a switch.  (A long prompt rather than a long
    # answer: a prefill is one launch, each answer token one more on the simulator.)
    long_, st = gen(c, LONG_PROMPT, 16)
    assert st.bmodel == models.bmodel_path(LONG).name and st.switch_s > 0
    assert_follows_reference(LONG, LONG_PROMPT, long_)

    back, st = gen(c, PROMPT, 20)  # and back again
    assert st.bmodel == models.bmodel_path(SHORT).name and st.switch_s > 0
    assert st.reused_tokens == 0  # a switch starts from an empty cache
    assert back == ref["ids"]

    single, _ = open_variant(LONG)  # the 256 member alone, token for token
    assert gen(single, LONG_PROMPT, 16)[0] == long_


def test_family_tokens_equal_the_single_bmodel_run(family, open_variant):
    c, _ = family
    fam_tokens, st = gen(c, PROMPT, 20)
    assert st.bmodel == models.bmodel_path(SHORT).name
    single, _ = open_variant(SHORT)
    assert gen(single, PROMPT, 20)[0] == fam_tokens


def test_prompt_too_long_for_every_member(family):
    c, _ = family
    with pytest.raises(PromptTooLong, match="at most 256"):
        gen(c, list(range(1, 300)), 4)
    assert gen(c, PROMPT, 3)[0]  # the engine is still usable


@pytest.mark.parametrize("other,why", [("qwen2-w8bf16", "weight sizes"), ("qwen2-f16", "checksum")])
def test_bmodels_of_other_weights_are_refused(sim_lib, build, engine_log, other, why):
    build(SHORT)
    build(other)
    with EngineClient(engine_log) as c:
        with pytest.raises(ModelError) as e:
            c.open(pair(SHORT, other), [0], sim_lib)
    msg = str(e.value)
    assert "\n" not in msg and why in msg and "does not hold the weights" in msg


def test_weight_check_needs_no_runtime(build):
    from tpuchat.runtime.weights import check_same_weights

    infos = check_same_weights([str(models.bmodel_path(SHORT)), str(models.bmodel_path(LONG))])
    assert [i.kv_len for i in infos] == [128, 256]


def test_a_runtime_that_stacks_the_weights_is_caught_and_each_member_loads_whole(family, sim_lib, engine_log,
                                                                                monkeypatch):
    """TPU-MLIR 1.30.2's runtime gives every net the whole shared area, so all
    weights land at its start.  The shim sees it from bmrt_get_coeff_info and
    falls back to whole loads (the answers in the tests above are right
    because of that); the verdict is kept for this runtime build."""
    c, desc = family
    fam = desc.family
    assert fam["share_checked"] is True
    assert fam["shared_weights"] is False and fam["weight_bytes"] == 0
    assert "nets embedding and lm_head at the same device memory" in fam["share_note"]
    assert "offsets 0x0 and 0x0" in fam["share_note"]

    def reopen():
        again = EngineClient(engine_log)
        try:
            return again.open(pair(LONG, SHORT), [0], sim_lib).family
        finally:
            again.close()

    later = reopen()  # the next run does not try again
    assert later["share_checked"] is False and later["share_note"] == fam["share_note"]
    monkeypatch.setenv("TPUCHAT_SHARE_WEIGHTS", "1")  # unless asked to
    assert reopen()["share_checked"] is True
    monkeypatch.setenv("TPUCHAT_SHARE_WEIGHTS", "0")  # or told not to try at all
    off = reopen()
    assert off["share_checked"] is False and off["shared_weights"] is False


@pytest.mark.parametrize(
    "ranges, why",
    [
        # embedding, lm_head, a block and its decode twin (same weights, one copy)
        ([("embedding", 0, 64, 1), ("lm_head", 64, 128, 2), ("block_0", 128, 512, 3),
          ("block_cache_0", 128, 512, 3)], None),
        # what the simulator's runtime does: everything at the start
        ([("embedding", 0, 64, 1), ("lm_head", 0, 64, 2)], "nets embedding and lm_head"),
        ([("embedding", 0, 64, 1), ("block_0", 0, 384, 3)], "nets embedding and block_0"),
        ([("block_0", 128, 512, 3), ("block_1", 256, 640, 3)], "nets block_0 and block_1"),
        ([("lm_head", 960, 1100, 2)], "outside the weight area"),
    ],
)
def test_placement_rule(ranges, why):
    from tpuchat.runtime.binding import check_weight_ranges

    got = check_weight_ranges(ranges, (0, 1024))
    if why is None:
        assert got is None
    else:
        assert why in got


def test_info_says_why_the_weights_are_not_shared(sim_lib, build, tmp_path):
    import os
    import subprocess
    import sys

    build(SHORT)
    build(LONG)
    env = dict(os.environ, TPUCHAT_STATE=str(tmp_path))
    env.pop("TPUCHAT_SHARE_WEIGHTS", None)
    r = subprocess.run([sys.executable, "-m", "tpuchat.cli", "info", pair(SHORT, LONG)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "one bmodel is on the device at a time (each switch loads it whole)" in r.stdout
    assert ("no shared weight area: the runtime put the weights of nets embedding and lm_head at the same "
            "device memory") in " ".join(r.stdout.split())
    assert (tmp_path / "runtime-checks.json").exists()  # remembered for this runtime build


def test_the_process_that_tried_a_shared_load_loads_nothing_else(sim_lib, build, tmp_path):
    """After a refused shared load, TPU-MLIR 1.30.2's runtime gives wrong tokens (or asserts
    "wrong gdma type") on later loads in the same process, depending on where memory lands: the
    engine stops there, and EngineClient loads the members whole in a fresh worker (the tests
    above answer through that one)."""
    import os
    import subprocess
    import sys

    build(SHORT)
    build(LONG)
    code = ("import sys\n"
            "from tpuchat.errors import SharedWeightsRefused\n"
            "from tpuchat.runtime.engine import Engine\n"
            "try:\n"
            f"    Engine({pair(LONG, SHORT)!r}, [0], {sim_lib!r})\n"
            "except SharedWeightsRefused as e:\n"
            "    print('REFUSED', e)\n")
    env = dict(os.environ, TPUCHAT_STATE=str(tmp_path))
    env.pop("TPUCHAT_SHARE_WEIGHTS", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "REFUSED the runtime put the weights of nets embedding and lm_head" in r.stdout, r.stderr[-2000:]
    assert (tmp_path / "runtime-checks.json").exists()
