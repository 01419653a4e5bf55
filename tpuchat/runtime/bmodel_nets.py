"""The network description inside a .bmodel file, read without a device.

A bmodel is a small header, a FlatBuffers table (the model description) and
a binary blob (weights, commands).  This module reads the description with a
minimal FlatBuffers reader of its own (no dependency; the format is a few
offset rules) and presents every net the way libbmrt presents it after
loading: for a multi-device bmodel (TPU-MLIR `--num_device N`) the compiler
writes one sub-net per device and step, tied together by a "cascade" record
(device id, step, main net name); the runtime shows one net per main name
whose inputs are the sub-nets' real inputs ordered by (device, index), each
with the device it lives on (`input_loc_devices`), and the same for outputs.

That view is what the shim's multi-device layout is planned against, so the
plan can be checked on the real description of a 2-device bmodel on a PC
whose simulator has only one device.

Field numbers below are facts of the bmodel schema (bmodel.fbs):
  Model:   chip 3, net 4, device_num 7
  Net:     name 0, parameter 3 (one per stage), cascade 4, addr_mode 5
  Cascade: device_id 0, step 1, main_name 2
  NetParameter: input_tensor 0, output_tensor 1, is_dynamic 5, core_num 16
  Tensor:  name 0, data_type 1, shape 5 ([Shape]), scale 7, zero_point 10,
           hidden 11 (0 hidden between cascade steps, 1/3 input, 2/4 output),
           index 12 (position in the main net)
  Shape:   dim 0 ([uint64])
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ModelError

DTYPE_NAMES = {0: "f32", 1: "f16", 2: "int8", 3: "uint8", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32",
               8: "bf16"}
MAGIC = 0xFF55AAEE
INPUT_FLAGS = (1, 3)
OUTPUT_FLAGS = (2, 4)


class _Table:
    """One FlatBuffers table: fields looked up through its vtable."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: memoryview, pos: int):
        self.buf = buf
        self.pos = pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, fid: int) -> int:
        o = 4 + 2 * fid
        if o >= self.vt_len:
            return 0
        return struct.unpack_from("<H", self.buf, self.vt + o)[0]

    def scalar(self, fid: int, fmt: str, default=0):
        o = self._field(fid)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0] if o else default

    def _target(self, fid: int) -> Optional[int]:
        o = self._field(fid)
        if not o:
            return None
        at = self.pos + o
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def string(self, fid: int) -> Optional[str]:
        t = self._target(fid)
        if t is None:
            return None
        n = struct.unpack_from("<I", self.buf, t)[0]
        return bytes(self.buf[t + 4:t + 4 + n]).decode("utf-8", "replace")

    def table(self, fid: int) -> Optional["_Table"]:
        t = self._target(fid)
        return None if t is None else _Table(self.buf, t)

    def tables(self, fid: int) -> List["_Table"]:
        t = self._target(fid)
        if t is None:
            return []
        n = struct.unpack_from("<I", self.buf, t)[0]
        out = []
        for i in range(n):
            at = t + 4 + 4 * i
            out.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return out

    def inline_struct(self, fid: int, fmt: str) -> Optional[tuple]:
        """An inline struct field (e.g. "<QQ"), None when absent."""
        o = self._field(fid)
        return struct.unpack_from(fmt, self.buf, self.pos + o) if o else None

    def scalars(self, fid: int, fmt: str) -> List:
        t = self._target(fid)
        if t is None:
            return []
        n = struct.unpack_from("<I", self.buf, t)[0]
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, t + 4))


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: List[int]
    device: int = 0


@dataclass
class Stage:
    inputs: List[Tensor]
    outputs: List[Tensor]


@dataclass
class Net:
    """One net as the runtime shows it (`bm_net_info_t`)."""

    name: str
    dynamic: bool
    addr_mode: int
    stages: List[Stage]
    cascade: bool = False  # stitched from per-device sub-nets
    subnets: List[str] = field(default_factory=list)

    @property
    def input_devices(self) -> List[int]:
        return [t.device for t in self.stages[0].inputs]

    @property
    def output_devices(self) -> List[int]:
        return [t.device for t in self.stages[0].outputs]


@dataclass
class BmodelNets:
    path: str
    chip: str
    num_device: int
    nets: List[Net]

    def net(self, name: str) -> Optional[Net]:
        for n in self.nets:
            if n.name == name:
                return n
        return None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BmodelNets":
        nets = []
        for n in d["nets"]:
            stages = [Stage([Tensor(**t) for t in s["inputs"]], [Tensor(**t) for t in s["outputs"]])
                      for s in n["stages"]]
            nets.append(Net(n["name"], n["dynamic"], n["addr_mode"], stages, n.get("cascade", False),
                            list(n.get("subnets", []))))
        return cls(d["path"], d["chip"], d["num_device"], nets)


def _tensor(t: _Table, device: int = 0) -> Tensor:
    shapes = t.tables(5)
    dims = [int(x) for x in shapes[0].scalars(0, "Q")] if shapes else []
    dt = t.scalar(1, "I")
    return Tensor(t.string(0) or "", DTYPE_NAMES.get(dt, str(dt)), dims, device)


def model_description(path: Path) -> Tuple[_Table, int]:
    """The description's root table and the file offset where the binary part
    (weights, commands) starts; reads only the header and the description."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12:
                raise ModelError(f"{path} is too short to be a bmodel")
            magic, header_size, fb_size = struct.unpack("<III", head)
            if magic != MAGIC:
                raise ModelError(f"{path} is not a bmodel (bad header)")
            f.seek(header_size)
            data = f.read(fb_size)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) != fb_size or fb_size < 8:
        raise ModelError(f"{path} is truncated: its model description is incomplete")
    buf = memoryview(data)
    try:
        return _Table(buf, struct.unpack_from("<I", buf, 0)[0]), header_size + fb_size
    except struct.error:
        raise ModelError(f"{path}: damaged model description") from None


def device_num(path) -> int:
    """The number of devices a bmodel was compiled for (1 for ordinary bmodels)."""
    try:
        return max(1, int(model_description(Path(path))[0].scalar(7, "I", 1)))
    except struct.error:
        raise ModelError(f"{path}: damaged model description") from None


def read(path) -> BmodelNets:
    """Every net of the bmodel at `path`, as the runtime would show it on
    as many devices as the bmodel was compiled for."""
    p = Path(path)
    try:
        return _read(p)
    except (struct.error, IndexError):
        raise ModelError(f"{p}: damaged model description") from None


def _read(p: Path) -> BmodelNets:
    model, _ = model_description(p)
    ndev = max(1, int(model.scalar(7, "I", 1)))
    plain: List[Net] = []
    cascades: Dict[str, list] = {}
    order: List[str] = []  # main names and plain nets in file order
    for net in model.tables(4):
        name = net.string(0) or ""
        params = net.tables(3)
        addr_mode = net.scalar(5, "i")
        dynamic = bool(params and params[0].scalar(5, "i"))
        casc = net.table(4)
        main = casc.string(2) if casc is not None else None
        if main:
            dev = int(casc.scalar(0, "I")) % ndev
            step = int(casc.scalar(1, "I"))
            if main not in cascades:
                cascades[main] = []
                order.append(main)
            cascades[main].append((step, dev, name, params[0] if params else None, addr_mode, dynamic))
            continue
        stages = [Stage([_tensor(t) for t in prm.tables(0)], [_tensor(t) for t in prm.tables(1)])
                  for prm in params]
        plain.append(Net(name, dynamic, addr_mode, stages))
        order.append(name)
    nets: Dict[str, Net] = {n.name: n for n in plain}
    for main, subs in cascades.items():
        nets[main] = _stitch(main, subs)
    chip = model.string(3) or ""
    return BmodelNets(str(p), chip, ndev, [nets[n] for n in order])


def _stitch(main: str, subs: list) -> Net:
    """A cascade net as the runtime builds it: the real inputs (hidden flag
    1/3) of all sub-nets, one per (name, device), stably ordered by (device,
    index); the real outputs (2/4) likewise; one stage."""
    subs = sorted(subs, key=lambda s: s[0])  # by step, file order within a step
    ins, outs = [], []
    for _step, dev, _name, prm, _am, _dyn in subs:
        if prm is None:
            continue
        for t in prm.tables(0):
            if t.scalar(11, "i") in INPUT_FLAGS:
                key = (t.string(0), dev)
                if all((x[2].name, x[2].device) != key for x in ins):
                    ins.append((dev, t.scalar(12, "i"), _tensor(t, dev)))
        for t in prm.tables(1):
            if t.scalar(11, "i") in OUTPUT_FLAGS:
                outs.append((dev, t.scalar(12, "i"), _tensor(t, dev)))
    ins.sort(key=lambda x: (x[0], x[1]))
    outs.sort(key=lambda x: (x[0], x[1]))
    return Net(main, any(s[5] for s in subs), subs[0][4], [Stage([x[2] for x in ins], [x[2] for x in outs])],
               cascade=True, subnets=[s[2] for s in subs])
