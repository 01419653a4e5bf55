"""Multi-device bmodels (TPU-MLIR --num_device 2), checked without a second device.

The simulator has only device 0, so a 2-device bmodel cannot run here.  What is
checked instead, on a real 2-device bmodel compiled by TPU-MLIR 1.24's
llm_convert (fixture `qwen2-2dev`):
- our reader of the bmodel's own description agrees with the compiler's
  `model_tool --info`;
- the shim's layout planner (the C function tpc_open runs for every net)
  finds, on that real description, every device's ids / hidden / position /
  mask / KV-history inputs and hidden / K / V outputs, KV shares that add up
  to the model's KV heads, and ties the compiler's cross-device tensors;
- a device-count mismatch and a missing device are one-line errors on the
  simulator.
"""

import copy
import json
import re
import subprocess
import sys

import pytest

from tests.fixtures import models
from tpuchat.errors import DeviceError, ModelError
from tpuchat.runtime import bmodel_nets
from tpuchat.runtime.binding import plan_net

VARIANT = "qwen2-2dev"


@pytest.fixture(scope="module")
def two_dev(build):
    build(VARIANT)
    return models.bmodel_path(VARIANT)


@pytest.fixture(scope="module")
def desc(two_dev):
    return bmodel_nets.read(two_dev)


@pytest.fixture(scope="module")
def source_config(two_dev):
    return json.loads((models.source_model_dir(VARIANT) / "config.json").read_text())


def _model_tool_nets(text):
    """model_tool --info's listing: {net: sorted [(dir, device, name, dims, dtype)]}."""
    nets, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"net: \[(\S+)\]", line)
        if m:
            cur = nets.setdefault(m.group(1), [])
            continue
        m = re.match(r"(input|output): devid\((\d+)\) (.+?), \[([\d, ]*)\], (\w+),", line)
        if m and cur is not None:
            dims = [int(x) for x in m.group(4).split(",") if x.strip()]
            cur.append((m.group(1), int(m.group(2)), m.group(3), dims, m.group(5)))
    return {k: sorted(v) for k, v in nets.items()}


DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "int32": "int32"}


def test_description_agrees_with_the_compilers_model_tool(two_dev, desc):
    info = (two_dev.parent / "model_info.txt").read_text()
    assert re.search(r"device num: 2\b", info)
    assert desc.num_device == 2 and desc.chip == "BM1684X"
    theirs = _model_tool_nets(info)
    ours = {}
    for n in desc.nets:
        s = n.stages[0]
        ours[n.name] = sorted(
            [("input", t.device, t.name, t.shape, t.dtype) for t in s.inputs]
            + [("output", t.device, t.name, t.shape, t.dtype) for t in s.outputs])
    theirs = {k: sorted((d, dev, name, dims, DTYPES.get(dt, dt)) for d, dev, name, dims, dt in v)
              for k, v in theirs.items()}
    assert set(ours) == set(theirs)
    for name in ours:
        assert ours[name] == theirs[name], name


def test_recorded_description_is_the_files(two_dev, desc):
    recorded = json.loads((two_dev.parent / "netinfo.json").read_text())
    assert recorded["num_device"] == 2
    assert bmodel_nets.BmodelNets.from_dict({**recorded, "path": str(two_dev)}).to_dict() == desc.to_dict()


def test_device_count_read_from_the_file(two_dev, build):
    assert bmodel_nets.device_num(two_dev) == 2
    build("qwen2-bf16")
    assert bmodel_nets.device_num(models.bmodel_path("qwen2-bf16")) == 1


def test_every_llm_net_spans_both_devices(desc):
    names = [n.name for n in desc.nets]
    for want in ("embedding", "embedding_cache", "lm_head", "block_0", "block_1", "block_cache_0", "block_cache_1"):
        assert want in names
    for n in desc.nets:
        assert n.cascade and len(n.stages) == 1
        assert sorted(set(n.input_devices)) == [0, 1], n.name
        assert sorted(set(n.output_devices)) == [0, 1], n.name
        # the runtime lists device 0's tensors first
        assert n.input_devices == sorted(n.input_devices)


def _by_role(plan, role, side="inputs"):
    key = "role_inputs" if side == "inputs" else "role_outputs"
    return plan[key][role]


def test_plan_embedding_and_head(desc):
    for name in ("embedding", "embedding_cache"):
        p = plan_net(desc.net(name), 2)
        s = desc.net(name).stages[0]
        assert p["kind"] == "embedding"
        ids = _by_role(p, "ids")
        assert [s.inputs[i].device for i in ids] == [0, 1]  # the same ids go to both devices
        assert all(s.inputs[i].name == "input_ids" and s.inputs[i].dtype == "int32" for i in ids)
        assert p["hidden_out_devices"] == [0, 1]
    p = plan_net(desc.net("lm_head"), 2)
    s = desc.net("lm_head").stages[0]
    hid = _by_role(p, "hidden")
    assert [s.inputs[i].device for i in hid] == [0, 1]
    tok = _by_role(p, "hidden", "outputs")
    assert [s.outputs[i].device for i in tok] == [0, 1]
    assert all(s.outputs[i].dtype == "int32" for i in tok)  # top-1 token on each device


@pytest.mark.parametrize("layer", [0, 1])
def test_plan_prefill_block(desc, source_config, layer):
    net = desc.net(f"block_{layer}")
    s, p = net.stages[0], plan_net(net, 2)
    assert p["kind"] == "block"
    hidden = source_config["hidden_size"]
    for dev in (0, 1):
        h, pos, mask = (_by_role(p, r)[dev] for r in ("hidden", "position", "mask"))
        assert (s.inputs[h].name, s.inputs[h].device, s.inputs[h].shape) == ("input_states", dev, [1, 256, hidden])
        assert (s.inputs[pos].name, s.inputs[pos].device, s.inputs[pos].dtype) == ("position_ids", dev, "int32")
        assert (s.inputs[mask].name, s.inputs[mask].device, s.inputs[mask].shape) == (
            "attention_mask", dev, [1, 1, 256, 256])
        k, v = _by_role(p, "k", "outputs")[dev], _by_role(p, "v", "outputs")[dev]
        assert s.outputs[k].name == f"k_cache_distribute_end_{dev}" and s.outputs[k].device == dev
        assert s.outputs[v].name == f"v_cache_distribute_end_{dev}" and s.outputs[v].device == dev
    # The layer's hidden output lives on device 0 only: the next net's input on
    # device 1 is fed by a copy.
    assert p["hidden_out_devices"] == [0]
    out0 = s.outputs[_by_role(p, "hidden", "outputs")[0]]
    assert out0.device == 0 and out0.shape == [1, 256, hidden]
    # each device computes its share of the KV heads
    assert p["kv_heads"] * 2 == p["kv_heads_total"] == source_config["num_key_value_heads"]


@pytest.mark.parametrize("layer", [0, 1])
def test_plan_decode_block(desc, source_config, layer):
    net = desc.net(f"block_cache_{layer}")
    s, p = net.stages[0], plan_net(net, 2)
    assert p["kind"] == "block_cache"
    kvh = source_config["num_key_value_heads"] // 2
    head_dim = source_config["hidden_size"] // source_config["num_attention_heads"]
    for dev in (0, 1):
        roles = {r: s.inputs[_by_role(p, r)[dev]] for r in ("hidden", "position", "mask", "history_k", "history_v")}
        assert all(t.device == dev for t in roles.values())
        assert roles["hidden"].name == "input_states" and roles["hidden"].shape == [1, 1, source_config["hidden_size"]]
        assert roles["position"].shape == [1, 1]
        assert roles["mask"].shape == [1, 1, 1, 257]
        assert roles["history_k"].name == f"history_k_{dev}" and roles["history_v"].name == f"history_v_{dev}"
        assert roles["history_k"].shape == roles["history_v"].shape == [1, 256, kvh, head_dim]
        k, v = _by_role(p, "k", "outputs")[dev], _by_role(p, "v", "outputs")[dev]
        assert s.outputs[k].shape == s.outputs[v].shape == [1, 1, kvh, head_dim]
        assert s.outputs[k].device == s.outputs[v].device == dev
    assert p["kv_heads"] == kvh and p["kv_heads_total"] == source_config["num_key_value_heads"]
    assert p["hidden_out_devices"] == [0]


@pytest.mark.parametrize("name", ["block_0", "block_cache_0", "block_1", "block_cache_1"])
def test_plan_ties_the_cross_device_sum_to_the_last_step(desc, name):
    """The compiler splits a layer into steps: partial results on each device,
    their sum on each device (an output), and a last step on device 0 that
    reads that sum (an input).  The plan feeds that input from the same
    device's sum output; the other leftover inputs keep the runtime's buffers."""
    net = desc.net(name)
    s, p = net.stages[0], plan_net(net, 2)
    tied = [(i, x["tied_to_output"]) for i, x in enumerate(p["inputs"]) if x["tied_to_output"] >= 0]
    assert len(tied) == p["num_tied"] == 1
    i, o = tied[0]
    assert s.inputs[i].name.endswith("o_proj.add_distribute_end") and s.inputs[i].device == 0
    assert "o_proj.add" in s.outputs[o].name and s.outputs[o].device == 0
    assert s.outputs[o].shape == s.inputs[i].shape
    assert p["outputs"][o]["role"] == "passthrough"
    # every planned input is on the device the plan says
    for x, t in zip(p["inputs"], s.inputs):
        assert x["device"] == t.device


def test_planner_refuses_incomplete_descriptions(desc):
    net = copy.deepcopy(desc.net("block_cache_0"))
    s = net.stages[0]
    s.inputs = [t for t in s.inputs if t.name != "history_k_1"]
    with pytest.raises(ModelError, match="block_cache_0 has no history_k input on device 1"):
        plan_net(net, 2)
    net = copy.deepcopy(desc.net("block_0"))
    net.stages[0].inputs[4].device = 2
    with pytest.raises(ModelError, match="lives on device 2, but the bmodel is for 2 devices"):
        plan_net(net, 2)
    net = copy.deepcopy(desc.net("block_cache_1"))
    k1 = [t for t in net.stages[0].inputs if t.name == "history_k_1"][0]
    k1.shape = [1, 256, 2, 32]
    with pytest.raises(ModelError, match="KV history of device 1 differs"):
        plan_net(net, 2)


@pytest.mark.parametrize("variant", ["qwen2-bf16", "qwen2-history"])
def test_plan_of_single_device_bmodels_is_the_fixed_layout(build, variant):
    """On one device the planner finds the layout the single-device path
    assumes (inputs hidden 0, position 1, mask 2, history 3/4; outputs 0/1/2)."""
    build(variant)
    d = bmodel_nets.read(models.bmodel_path(variant))
    assert d.num_device == 1
    for n in d.nets:
        if not n.name.startswith("block"):
            continue
        p = plan_net(n, 1)
        assert p["role_inputs"]["hidden"] == [0] and p["role_inputs"]["position"] == [1]
        assert p["role_outputs"] == {"hidden": [0], "k": [1], "v": [2]}
        if n.name.startswith("block_cache"):
            assert p["role_inputs"]["mask"] == [2]
            assert p["role_inputs"]["history_k"] == [3] and p["role_inputs"]["history_v"] == [4]
        assert p["num_passthrough_in"] == 0


# -- on the simulator (device 0 only) ------------------------------------------


def _open(path, devids, sim_lib, log):
    from tpuchat.runtime.client import EngineClient

    with EngineClient(log) as c:
        c.open(str(path), list(devids), sim_lib)


@pytest.mark.sim
def test_two_device_bmodel_on_one_device_is_a_clear_error(sim_lib, two_dev, tmp_path):
    with pytest.raises(DeviceError, match=r"compiled for 2 devices but 1 device id was given .*--devid 0,1"):
        _open(two_dev, [0], sim_lib, tmp_path / "log")


@pytest.mark.sim
def test_two_device_bmodel_with_a_missing_device_is_a_clear_error(sim_lib, two_dev, tmp_path):
    with pytest.raises(DeviceError, match="device 1 does not exist"):
        _open(two_dev, [0, 1], sim_lib, tmp_path / "log")


@pytest.mark.sim
def test_single_device_bmodel_with_two_ids_is_a_clear_error(sim_lib, build, tmp_path):
    """Ids are checked first (the simulator has no device 1), then the count."""
    build("qwen2-bf16")
    with pytest.raises(DeviceError, match="device 1 does not exist"):
        _open(models.bmodel_path("qwen2-bf16"), [0, 1], sim_lib, tmp_path / "log")


@pytest.mark.sim
def test_cli_mismatch_is_one_line(sim_lib, two_dev, tmp_path):
    import os

    env = dict(os.environ, TPUCHAT_STATE=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "tpuchat.cli", "info", str(two_dev), "--devid", "0"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 5, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tpuchat: error: "), r.stderr
    assert "compiled for 2 devices but 1 device id was given" in lines[0]
