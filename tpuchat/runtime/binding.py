"""Thin Python wrapper over the C shim: every return code is checked and
turned into a TpuchatError with the shim's one-line message."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .protocol import DeviceStat, ModelDesc  # noqa: F401  (re-exported)
from ..errors import ContextFull, DeviceError, EngineCrashed, ModelError, PromptTooLong, RuntimeNotFound, TpuchatError

DTYPE_NAMES = {0: "f32", 1: "f16", 2: "int8", 3: "uint8", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32", 8: "bf16"}
_ERRLEN = 512


def _shim():
    try:
        from .. import _shim  # built by cffi at install time
    except ImportError as e:  # pragma: no cover - a broken install
        raise RuntimeNotFound(f"tpuchat's native shim is not built ({e}); reinstall with pip install -e .") from None
    return _shim


def _raise(code: int, message: str):
    lib = _shim().lib
    cls = {
        lib.TPC_E_LIB: RuntimeNotFound,
        lib.TPC_E_DEVICE: DeviceError,
        lib.TPC_E_LOAD: ModelError,
        lib.TPC_E_MODEL: ModelError,
        lib.TPC_E_FULL: ContextFull,
        lib.TPC_E_RUNTIME: EngineCrashed,
        lib.TPC_E_TOO_LONG: PromptTooLong,
    }.get(code, TpuchatError)
    raise cls(message)


def _err_buf():
    return _shim().ffi.new("char[]", _ERRLEN)


def _text(ffi, buf) -> str:
    return ffi.string(buf).decode("utf-8", "replace")


def load_runtime(lib_dir: str) -> None:
    s = _shim()
    err = _err_buf()
    rc = s.lib.tpc_runtime_load(str(lib_dir).encode(), err, _ERRLEN)
    if rc:
        _raise(rc, _text(s.ffi, err))


def device_count() -> int:
    s = _shim()
    err = _err_buf()
    n = s.ffi.new("int *")
    rc = s.lib.tpc_device_count(n, err, _ERRLEN)
    if rc:
        _raise(rc, _text(s.ffi, err))
    return n[0]


def device_stat(devid: int) -> DeviceStat:
    s = _shim()
    err = _err_buf()
    out = s.ffi.new("tpc_device_stat *")
    rc = s.lib.tpc_device_stat_of(devid, out, err, _ERRLEN)
    if rc:
        _raise(rc, _text(s.ffi, err))
    return DeviceStat(out.devid, out.mem_total_mb, out.mem_used_mb, out.tpu_util)


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: List[int]
    device: int


@dataclass
class NetInfo:
    name: str
    dynamic: bool
    addr_mode: int
    stages: List[Dict[str, List[TensorInfo]]]


class Model:
    """One loaded bmodel on one or more devices."""

    def __init__(self, bmodel_path: str, devids: Sequence[int]):
        s = _shim()
        self._ffi, self._lib = s.ffi, s.lib
        err = _err_buf()
        ids = self._ffi.new("int[]", list(devids))
        out = self._ffi.new("tpc_model **")
        rc = self._lib.tpc_open(str(bmodel_path).encode(), ids, len(devids), out, err, _ERRLEN)
        if rc:
            _raise(rc, _text(self._ffi, err))
        self._m = out[0]
        self._next = self._ffi.new("int *")
        self._timing = self._ffi.new("tpc_timing *")
        self.devids = list(devids)

    @classmethod
    def _borrowed(cls, handle, devids: Sequence[int]) -> "Model":
        """A view of a model a Family owns: close() leaves it alone."""
        s = _shim()
        self = cls.__new__(cls)
        self._ffi, self._lib = s.ffi, s.lib
        self._m = handle
        self._next = self._ffi.new("int *")
        self._timing = self._ffi.new("tpc_timing *")
        self.devids = list(devids)
        self._borrowed_handle = True
        return self

    # -- inference -------------------------------------------------------
    def _check(self, rc: int):
        if rc:
            _raise(rc, _text(self._ffi, self._lib.tpc_error(self._m)))

    def prefill(self, ids: Sequence[int]) -> int:
        buf = self._ffi.new("int[]", list(ids))
        self._check(self._lib.tpc_prefill(self._m, buf, len(ids), self._next))
        return self._next[0]

    def prefill_reuse(self, ids: Sequence[int], always_append: bool = False) -> int:
        """Prefill keeping the cached rows of the common prefix (see the shim):
        when appending is cheaper than a fresh prefill by measured costs, or
        whenever possible with always_append."""
        self._check(self._lib.tpc_set_append_policy(
            self._m, self._lib.TPC_APPEND_ALWAYS if always_append else self._lib.TPC_APPEND_BY_COST))
        buf = self._ffi.new("int[]", list(ids))
        self._check(self._lib.tpc_prefill_reuse(self._m, buf, len(ids), self._next))
        return self._next[0]

    def rewind(self, position: int) -> None:
        self._check(self._lib.tpc_rewind(self._m, position))

    def pin_prefix(self, ids: Sequence[int]) -> None:
        """Compute (or keep) the KV rows of `ids` and hold a device copy of
        them for every later prompt that starts with them; [] drops it."""
        buf = self._ffi.new("int[]", list(ids) or [0])
        self._check(self._lib.tpc_pin_prefix(self._m, buf, len(ids)))

    @property
    def pinned_prefix(self) -> int:
        return self._lib.tpc_pinned_prefix(self._m)

    def decode(self, token: int) -> int:
        self._check(self._lib.tpc_decode(self._m, token, self._next))
        return self._next[0]

    def chunk_picks(self, ids: Sequence[int]) -> List[int]:
        """Feed `ids` as one block_kv chunk at the current position and return
        the model's greedy pick after each of them (picks[0] is what
        decode(ids[0]) would return); the position advances by len(ids).
        rewind() forgets the rows not kept."""
        n = len(ids)
        buf = self._ffi.new("int[]", list(ids))
        picks = self._ffi.new("int[]", max(1, n))
        self._check(self._lib.tpc_chunk_picks(self._m, buf, n, picks))
        return list(picks)[:n]

    @property
    def chunk_capacity(self) -> int:
        """Longest chunk chunk_picks takes (0: no block_kv nets)."""
        return self._lib.tpc_chunk_capacity(self._m)

    def set_sampling(self, sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                     repetition_penalty: float = 1.0, penalty_window: int = 0, seed: int = 0,
                     on_host: bool = False) -> None:
        sp = self._ffi.new("tpc_sampling *")
        sp.sample = 1 if sample else 0
        sp.temperature = temperature
        sp.top_p = top_p
        sp.top_k = top_k
        sp.repetition_penalty = repetition_penalty
        sp.penalty_window = penalty_window
        sp.seed = seed & 0xFFFFFFFFFFFFFFFF
        sp.on_host = 1 if on_host else 0
        self._check(self._lib.tpc_set_sampling(self._m, sp))

    def reset(self) -> None:
        self._check(self._lib.tpc_reset(self._m))

    # -- vision ----------------------------------------------------------
    def set_image(self, pixel_values: bytes, tiles: int, size: int, aspect_ratio_id: int,
                  aspect_ratio_mask: Sequence[int]) -> float:
        """Run the vit on one preprocessed image (f32 [tiles,3,size,size] bytes) and keep
        its states on the device; returns the call's wall time in seconds."""
        want = tiles * 3 * size * size * 4
        if len(pixel_values) != want:
            raise TpuchatError(f"pixel values hold {len(pixel_values)} bytes, expected {want} "
                               f"(float32 [{tiles}, 3, {size}, {size}])")
        px = self._ffi.from_buffer("float[]", pixel_values)
        mask = self._ffi.new("int[]", [int(x) for x in aspect_ratio_mask] + [0] * max(0, tiles - len(aspect_ratio_mask)))
        self._check(self._lib.tpc_set_image(self._m, px, tiles, size, int(aspect_ratio_id), mask))
        self._check(self._lib.tpc_last_timing(self._m, self._timing))
        return self._timing.total_us / 1e6

    def set_image_pos(self, image_pos: int) -> None:
        """Index of the image token in the next prompts' ids; -1 for text only."""
        self._check(self._lib.tpc_set_image_pos(self._m, int(image_pos)))

    def image_states(self) -> List[float]:
        """The held image states (the vit output) as floats, [tiles, patches, hidden] flattened."""
        v = self._ffi.new("tpc_vision_desc *")
        self._check(self._lib.tpc_describe_vision(self._m, v))
        d = self._ffi.new("tpc_desc *")
        self._check(self._lib.tpc_describe(self._m, d))
        n = v.tiles * v.patches * d.hidden_size
        buf = self._ffi.new("float[]", max(1, n))
        self._check(self._lib.tpc_image_states(self._m, buf, n))
        return list(buf)[:n]

    @property
    def position(self) -> int:
        return self._lib.tpc_position(self._m)

    def last_timing(self):
        """(total_us, device_us, host_us, launches, copies) of the last call."""
        self._check(self._lib.tpc_last_timing(self._m, self._timing))
        t = self._timing
        return t.total_us, t.device_us, t.host_us, t.launches, t.copies

    def set_head_path(self, path: str = "auto", device_us: float = 0.0, host_us: float = 0.0) -> None:
        """How a greedy token is chosen after a logits lm_head: "auto" (the
        cheaper by measured cost), "device" (greedy_head) or "host" (argmax)."""
        code = {"auto": self._lib.TPC_HEAD_AUTO, "device": self._lib.TPC_HEAD_DEVICE,
                "host": self._lib.TPC_HEAD_HOST}[path]
        self._check(self._lib.tpc_set_head_path(self._m, code, device_us, host_us))

    def head_costs(self):
        """(device_us, host_us, next path: "device" | "host" | "") of the greedy choice."""
        out = self._ffi.new("double[2]")
        path = self._ffi.new("int *")
        self._check(self._lib.tpc_head_costs(self._m, out, out + 1, path))
        return out[0], out[1], {self._lib.TPC_HEAD_DEVICE: "device", self._lib.TPC_HEAD_HOST: "host"}.get(path[0], "")

    def last_reused(self) -> int:
        """Cached rows kept by the last prefill_reuse."""
        self._check(self._lib.tpc_last_timing(self._m, self._timing))
        return self._timing.reused

    def last_logits(self, vocab_size: int):
        buf = self._ffi.new("float[]", vocab_size)
        self._check(self._lib.tpc_last_logits(self._m, buf, vocab_size))
        return list(buf)

    # -- description -----------------------------------------------------
    def _tensor(self, net: int, is_output: int, idx: int, stage: int) -> TensorInfo:
        t = self._ffi.new("tpc_tensor_info *")
        self._check(self._lib.tpc_net_tensor(self._m, net, is_output, idx, stage, t))
        return TensorInfo(
            self._ffi.string(t.name).decode(),
            DTYPE_NAMES.get(t.dtype, str(t.dtype)),
            [t.dims[i] for i in range(t.num_dims)],
            t.device,
        )

    def nets(self) -> List[NetInfo]:
        d = self._ffi.new("tpc_desc *")
        self._check(self._lib.tpc_describe(self._m, d))
        out = []
        info = self._ffi.new("tpc_net_info *")
        for i in range(d.num_nets):
            self._check(self._lib.tpc_net_info_at(self._m, i, info))
            stages = []
            for s in range(info.num_stages):
                stages.append(
                    {
                        "inputs": [self._tensor(i, 0, k, s) for k in range(info.num_inputs)],
                        "outputs": [self._tensor(i, 1, k, s) for k in range(info.num_outputs)],
                    }
                )
            out.append(NetInfo(self._ffi.string(info.name).decode(), bool(info.is_dynamic), info.addr_mode, stages))
        return out

    def describe(self, file_info) -> ModelDesc:
        d = self._ffi.new("tpc_desc *")
        self._check(self._lib.tpc_describe(self._m, d))
        nets = self.nets()
        names = [n.name for n in nets]
        heads = [h for h in ("greedy_head", "sample_head", "penalty_sample_head") if h in names]
        devices = []
        st = self._ffi.new("tpc_device_stat *")
        share = max(1, d.num_device)  # the KV heads are split equally (checked by the shim's plan)
        for i in range(len(self.devids)):
            if self._lib.tpc_device_stat_at(self._m, i, st) == 0:
                devices.append(DeviceStat(st.devid, st.mem_total_mb, st.mem_used_mb, st.tpu_util,
                                          d.kv_heads // share, d.kv_cache_bytes // share))
        dtype = DTYPE_NAMES.get(d.float_dtype, "?")
        return ModelDesc(
            path=str(file_info.path),
            file_size=file_info.size,
            chip=file_info.chip,
            toolchain=file_info.toolchain,
            num_layers=d.num_layers,
            seq_len=d.seq_len,
            kv_len=d.kv_len,
            hidden_size=d.hidden_size,
            kv_heads=d.kv_heads,
            head_dim=d.head_dim,
            dtype=dtype,
            quantization=_guess_quant(str(file_info.path), nets, dtype),
            addr_mode=d.addr_mode,
            dynamic=bool(d.is_dynamic),
            prefill_has_mask=bool(d.prefill_has_mask),
            stages=[d.stage_seq_len[i] for i in range(d.num_stages)],
            num_device=d.num_device,
            lm_head="top1" if d.lm_head_kind == 1 else "logits",
            vocab_size=d.vocab_size,
            heads=heads,
            block_kv=bool(d.has_block_kv),
            kv_cache_bytes=d.kv_cache_bytes,
            nets=names,
            convention=self._ffi.string(d.convention).decode(),
            decode_embed=EMBED_DECODE.get(d.decode_embed, str(d.decode_embed)),
            kv_layout=KV_LAYOUTS.get(d.kv_layout, str(d.kv_layout)),
            devices=devices,
            **self._vision_fields(),
        )

    def _vision_fields(self) -> dict:
        v = self._ffi.new("tpc_vision_desc *")
        self._check(self._lib.tpc_describe_vision(self._m, v))
        return {
            "has_vision": bool(v.has_vision),
            "vision_tiles": v.tiles,
            "image_size": v.image_size,
            "image_patches": v.patches,
            "cross_layers": [v.cross_layers[i] for i in range(min(v.num_cross_layers, 64))],
            "image_kv_bytes": v.image_kv_bytes,
        }

    def close(self) -> None:
        if getattr(self, "_borrowed_handle", False):
            self._m = None
            return
        if self._m is not None:
            self._lib.tpc_close(self._m)
            self._m = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _guess_quant(path: str, nets, dtype: str) -> str:
    """Weights' quantisation is not visible in the net IO; llm_convert and
    LLM-TPU name their files with it (qwen2-7b_w4bf16_seq512.bmodel)."""
    import re

    m = re.search(r"(w4bf16|w8bf16|w4f16|w8f16|int4|int8|bf16|f16|fp16)", path.rsplit("/", 1)[-1].lower())
    return m.group(1) if m else dtype


# -- multi-device layout plan ----------------------------------------------
ROLE_NAMES = {0: "passthrough", 1: "ids", 2: "hidden", 3: "position", 4: "mask", 5: "history_k", 6: "history_v",
              7: "k", 8: "v"}
NET_KINDS = {0: "other", 1: "embedding", 2: "block", 3: "block_cache", 4: "block_kv", 5: "lm_head"}
_DTYPE_CODES = {v: k for k, v in DTYPE_NAMES.items()}


def _fill_net_desc(ffi, desc, net, keep: list) -> None:
    """Stage 0 of a `bmodel_nets.Net` as the shim's tpc_net_desc (`keep` holds the C memory alive)."""
    stage = net.stages[0]

    def tensors(ts):
        arr = ffi.new("tpc_tensor_info[]", max(1, len(ts)))
        keep.append(arr)
        for i, t in enumerate(ts):
            name = ffi.new("char[]", t.name.encode())
            keep.append(name)
            arr[i].name = name
            arr[i].dtype = _DTYPE_CODES.get(t.dtype, -1)
            arr[i].num_dims = len(t.shape)
            for k, dim in enumerate(t.shape[:8]):
                arr[i].dims[k] = dim
            arr[i].device = t.device
        return arr

    cname = ffi.new("char[]", net.name.encode())
    keep.append(cname)
    desc.name = cname
    desc.num_inputs, desc.num_outputs = len(stage.inputs), len(stage.outputs)
    desc.inputs, desc.outputs = tensors(stage.inputs), tensors(stage.outputs)


EMBED_DECODE = {0: "embedding_cache", 1: "1-row embedding stage", 2: "embedding prefill stage, row 0"}
KV_LAYOUTS = {0: "rows", 1: "sliding"}
SAMPLE_ROLES = ("logits", "input_ids", "penalty", "temperature", "top_k", "top_p")


def match_roles(nets) -> dict:
    """The shim's role matcher (the same C function it runs at open) over a
    list of `bmodel_nets.Net`, with no runtime or device involved: which
    convention the nets follow and which net plays which role.  Raises
    ModelError with the matcher's one-line message when nothing fits."""
    s = _shim()
    ffi, lib = s.ffi, s.lib
    keep = []
    arr = ffi.new("tpc_net_summary[]", max(1, len(nets)))
    for i, net in enumerate(nets):
        _fill_net_desc(ffi, ffi.addressof(arr[i], "io"), net, keep)
        arr[i].num_stages = min(8, len(net.stages))
        arr[i].is_dynamic = int(net.dynamic)
        for k, st in enumerate(net.stages[:8]):
            shape = st.inputs[0].shape if st.inputs else []
            arr[i].stage_rows[k] = shape[1] if len(shape) > 1 else 0
    r = ffi.new("tpc_roles *")
    err = _err_buf()
    rc = lib.tpc_match_roles(arr, len(nets), r, err, _ERRLEN)
    if rc:
        _raise(rc, _text(ffi, err))
    return _roles_dict(ffi, r, [n.name for n in nets])


def _roles_dict(ffi, r, names: List[str]) -> dict:
    def net(i):
        return names[i] if 0 <= i < len(names) else None

    return {
        "convention": ffi.string(r.name).decode(),
        "convention_id": r.convention,
        "num_layers": r.num_layers,
        "num_device": r.num_device,
        "embedding": net(r.embedding),
        "embedding_cache": net(r.embedding_cache),
        "lm_head": net(r.lm_head),
        "greedy_head": net(r.greedy_head),
        "sample_head": net(r.sample_head),
        "decode_embed": EMBED_DECODE.get(r.decode_embed, str(r.decode_embed)),
        "decode_embed_stage": r.decode_embed_stage,
        "kv_layout": KV_LAYOUTS.get(r.kv_layout, str(r.kv_layout)),
        "learned_positions": bool(r.learned_positions),
        "mask_value": r.mask_value,
        "sample_inputs": {SAMPLE_ROLES[k]: r.sample_in[k] for k in range(6)} if r.sample_head >= 0 else {},
    }


def plan_net(net, num_device: int) -> dict:
    """The shim's multi-device layout plan (the same C function the shim runs
    when it opens a bmodel) for one net described by `bmodel_nets.Net`, with
    no runtime or device involved.  Returns per input/output its role and
    device, per role the input/output index on each device, and the KV share.
    Raises ModelError with the planner's message when the net cannot be laid out."""
    s = _shim()
    ffi, lib = s.ffi, s.lib
    stage = net.stages[0]
    keep = []
    desc = ffi.new("tpc_net_desc *")
    _fill_net_desc(ffi, desc, net, keep)
    plan = ffi.new("tpc_net_plan *")
    err = _err_buf()
    rc = lib.tpc_plan_net(desc, num_device, plan, err, _ERRLEN)
    if rc:
        _raise(rc, _text(ffi, err))
    n_in, n_out = plan.num_inputs, plan.num_outputs
    return {
        "kind": NET_KINDS.get(plan.kind, str(plan.kind)),
        "num_device": plan.num_device,
        "inputs": [{"name": stage.inputs[i].name, "role": ROLE_NAMES[plan.in_role[i]], "device": plan.in_device[i],
                    "tied_to_output": plan.in_tie[i]} for i in range(n_in)],
        "outputs": [{"name": stage.outputs[i].name, "role": ROLE_NAMES[plan.out_role[i]],
                     "device": plan.out_device[i]} for i in range(n_out)],
        "role_inputs": {ROLE_NAMES[r]: [plan.role_input[r][d] for d in range(num_device)] for r in range(1, 7)},
        "role_outputs": {ROLE_NAMES[r]: [plan.role_output[r][d] for d in range(num_device)] for r in (2, 7, 8)},
        "hidden_out_devices": [d for d in range(num_device) if plan.hidden_out_devices >> d & 1],
        "kv_heads": plan.kv_heads,
        "kv_heads_total": plan.kv_heads_total,
        "num_passthrough_in": plan.num_passthrough_in,
        "num_tied": plan.num_tied,
    }

# -- model families (--model a.bmodel,b.bmodel) ------------------------------


@dataclass
class BmodelMemory:
    weight_bytes: int
    instruction_bytes: int
    neuron_bytes: int
    io_bytes: int


def bmodel_memory(path: str) -> BmodelMemory:
    """Device memory a bmodel needs, as the runtime computes it."""
    s = _shim()
    err = _err_buf()
    out = s.ffi.new("tpc_bmodel_memory *")
    rc = s.lib.tpc_bmodel_memory_of(str(path).encode(), out, err, _ERRLEN)
    if rc:
        _raise(rc, _text(s.ffi, err))
    return BmodelMemory(out.weight_bytes, out.instruction_bytes, out.neuron_bytes, out.io_bytes)


def check_weight_ranges(ranges, area: Tuple[int, int]) -> Optional[str]:
    """The shim's rule for a shared weight area, on given ranges:
    [(net, lo, hi, signature)] -> None when sound, else why not."""
    s = _shim()
    ffi, lib = s.ffi, s.lib
    n = len(ranges)
    lo = ffi.new("unsigned long long[]", [r[1] for r in ranges] or [0])
    hi = ffi.new("unsigned long long[]", [r[2] for r in ranges] or [0])
    sig = ffi.new("unsigned long long[]", [r[3] for r in ranges] or [0])
    keep = [ffi.new("char[]", r[0].encode()) for r in ranges]
    names = ffi.new("char *[]", keep or [ffi.NULL])
    err = _err_buf()
    rc = lib.tpc_check_weight_ranges(lo, hi, sig, names, n, area[0], area[1], err, _ERRLEN)
    return _text(ffi, err) if rc else None


class Family:
    """Bmodels of the same weights on one device, one loaded at a time
    (see tpc_family_* in the shim).  `model` is the loaded member."""

    def __init__(self, paths: Sequence[str], devids: Sequence[int], first: int = 0, share_weights: bool = False):
        s = _shim()
        self._ffi, self._lib = s.ffi, s.lib
        self.paths = [str(p) for p in paths]
        self.devids = list(devids)
        err = _err_buf()
        self._cpaths = [self._ffi.new("char[]", p.encode()) for p in self.paths]
        arr = self._ffi.new("char *[]", self._cpaths)
        ids = self._ffi.new("int[]", self.devids)
        out = self._ffi.new("tpc_family **")
        rc = self._lib.tpc_family_open(arr, len(self.paths), ids, len(self.devids), first,
                                       1 if share_weights else 0, out, err, _ERRLEN)
        if rc:
            _raise(rc, _text(self._ffi, err))
        self._f = out[0]
        self._info = self._ffi.new("tpc_family_info *")
        self.model = Model._borrowed(self._lib.tpc_family_model(self._f), self.devids)

    def switch(self, index: int) -> "Model":
        """Load member `index` (its KV cache starts empty); a no-op when loaded."""
        if index != self.active:
            self.model._m = None  # the old member's handle dies with the switch
            rc = self._lib.tpc_family_switch(self._f, index)
            if rc:
                _raise(rc, _text(self._ffi, self._lib.tpc_family_error(self._f)))
            self.model = Model._borrowed(self._lib.tpc_family_model(self._f), self.devids)
        return self.model

    def info(self):
        if self._lib.tpc_family_get_info(self._f, self._info):
            _raise(self._lib.TPC_E_ARG, "the model family is closed")
        return self._info

    @property
    def active(self) -> int:
        return self.info().active

    @property
    def shared(self) -> bool:
        return bool(self.info().shared)

    @property
    def weight_bytes(self) -> int:
        return int(self.info().weight_bytes)

    @property
    def share_note(self) -> str:
        """Why the members do not share one weight area although asked to ("" otherwise)."""
        return _text(self._ffi, self.info().share_note)

    @property
    def last_switch_s(self) -> float:
        return self.info().last_switch_us / 1e6

    def close(self) -> None:
        if self._f is not None:
            self.model._m = None
            self._lib.tpc_family_close(self._f)
            self._f = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
