"""Do several bmodels hold the same weights?  (`--model a.bmodel,b.bmodel`)

A family of bmodels compiled from one model with different lengths may share
one engine.  Before any of them is loaded, their weights are compared from
the files alone: each net's weight block (the flatbuffer's CoeffMem: size,
SHA-256 check code, and the list of weight tensors in it).  Blocks of equal
size must have equal check codes.  A longer bmodel carries longer position
tables (rotary cos/sin, one row per KV position) beside the same weights, so
its blocks are larger: then every tensor must match in name and size, except
tables whose size grows in proportion to the KV length, and the tensors of
equal size are compared by their bytes (whole when small, a sample of both
ends when large: a changed checkpoint differs everywhere).

The reader below walks the flatbuffer by field index (TPU-MLIR's bmodel.fbs:
Model.net = 4, Net.name = 0, Net.parameter = 3, NetParameter.input_tensor =
0, .coeff_mem = 4, CoeffMem.check_code = 1, .binary_coeff = 2, .location =
3, Location.name/offset/size = 0/1/2, Tensor.shape = 5, Shape.dim = 0).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ModelError

_SAMPLE = 1 << 16  # bytes compared at each end of a large tensor


def split_models(text) -> List[str]:
    """`a.bmodel,b.bmodel` -> both paths; a single path (even one with a comma
    that exists as a file) -> [path]."""
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    text = str(text)
    if "," not in text or os.path.exists(text):
        return [text]
    return [p.strip() for p in text.split(",") if p.strip()]


class _Table:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos

    def _field(self, i: int) -> int:
        vt = self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]
        vt_size = struct.unpack_from("<H", self.buf, vt)[0]
        if 4 + 2 * i >= vt_size:
            return 0
        return struct.unpack_from("<H", self.buf, vt + 4 + 2 * i)[0]

    def _ref(self, i: int) -> Optional[int]:
        o = self._field(i)
        if not o:
            return None
        p = self.pos + o
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def u64(self, i: int) -> int:
        o = self._field(i)
        return struct.unpack_from("<Q", self.buf, self.pos + o)[0] if o else 0

    def struct_at(self, i: int, fmt: str) -> Optional[tuple]:
        o = self._field(i)
        return struct.unpack_from(fmt, self.buf, self.pos + o) if o else None

    def table(self, i: int) -> Optional["_Table"]:
        p = self._ref(i)
        return _Table(self.buf, p) if p is not None else None

    def string(self, i: int) -> str:
        p = self._ref(i)
        if p is None:
            return ""
        n = struct.unpack_from("<I", self.buf, p)[0]
        return self.buf[p + 4:p + 4 + n].decode("utf-8", "replace")

    def tables(self, i: int) -> List["_Table"]:
        p = self._ref(i)
        if p is None:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        out = []
        for k in range(n):
            e = p + 4 + 4 * k
            out.append(_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]))
        return out

    def vector(self, i: int, fmt: str) -> tuple:
        p = self._ref(i)
        if p is None:
            return ()
        n = struct.unpack_from("<I", self.buf, p)[0]
        return struct.unpack_from("<%d%s" % (n, fmt), self.buf, p + 4)


@dataclass
class WeightBlock:
    net: str
    start: int  # offset of the block's bytes in the file
    size: int
    check: bytes
    tensors: List[Tuple[str, int, int]]  # (name, offset in block, size)


@dataclass
class WeightInfo:
    path: str
    kv_len: int
    blocks: Dict[str, WeightBlock] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(b.size for b in self.blocks.values())


def read_weights(path) -> WeightInfo:
    """The weight blocks of a bmodel (first stage of each net) and its KV length."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            magic, header_size, fb_size = struct.unpack("<III", f.read(12))
            f.seek(header_size)
            buf = f.read(fb_size)
    except (OSError, struct.error) as e:
        raise ModelError(f"cannot read {p}: {e}") from None
    try:
        root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        info = WeightInfo(str(p), 0)
        binary_base = header_size + fb_size
        for net in root.tables(4):
            name = net.string(0)
            params = net.tables(3)
            if not params:
                continue
            if name == "block_cache_0":
                tensors = params[0].tables(0)
                if len(tensors) > 3:
                    shapes = tensors[3].tables(5)
                    dims = shapes[0].vector(0, "Q") if shapes else ()
                    info.kv_len = int(dims[1]) if len(dims) > 1 else 0
            cm = params[0].table(4)
            if cm is None:
                continue
            binary = cm.struct_at(2, "<QQ")
            if not binary or not binary[1]:
                continue
            locs = [(loc.string(0), loc.u64(1), loc.u64(2)) for loc in cm.tables(3)]
            info.blocks[name] = WeightBlock(name, binary_base + binary[0], binary[1], bytes(cm.vector(1, "B")), locs)
        return info
    except (struct.error, IndexError) as e:
        raise ModelError(f"cannot read the weight layout of {p} (damaged bmodel?): {e}") from None


def _digest(path: str, start: int, size: int) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= 2 * _SAMPLE:
            f.seek(start)
            h.update(f.read(size))
        else:
            f.seek(start)
            h.update(f.read(_SAMPLE))
            f.seek(start + size - _SAMPLE)
            h.update(f.read(_SAMPLE))
    return h.digest()


def _compare(a: WeightInfo, b: WeightInfo) -> Optional[str]:
    """None when b holds a's weights, else why not (a few words)."""
    if set(a.blocks) != set(b.blocks):
        only = sorted(set(a.blocks) ^ set(b.blocks))
        return f"their nets differ ({', '.join(only[:4])})"
    for name, x in a.blocks.items():
        y = b.blocks[name]
        if x.size == y.size:
            if x.check and y.check and x.check != y.check:
                return f"the weights of net {name} differ (checksum)"
            continue
        if [t[0] for t in x.tensors] != [t[0] for t in y.tensors] or not x.tensors:
            return f"the weight sizes of net {name} differ ({x.size} vs {y.size} bytes)"
        for (tname, xo, xs), (_, yo, ys) in zip(x.tensors, y.tensors):
            if xs == ys:
                if _digest(a.path, x.start + xo, xs) != _digest(b.path, y.start + yo, ys):
                    return f"the weights of net {name} differ ({tname})"
            elif not (a.kv_len and b.kv_len and a.kv_len != b.kv_len and xs * b.kv_len == ys * a.kv_len):
                return f"the weight sizes of net {name} differ ({tname}: {xs} vs {ys} bytes)"
    return None


def check_same_weights(paths: Sequence[str]) -> List[WeightInfo]:
    """Raise ModelError (one line) unless every bmodel holds the first one's weights."""
    infos = [read_weights(p) for p in paths]
    first = infos[0]
    for other in infos[1:]:
        why = _compare(first, other)
        if why:
            raise ModelError(
                f"{Path(other.path).name} does not hold the weights of {Path(first.path).name}: {why} "
                f"(weights {first.total} vs {other.total} bytes); --model a,b needs bmodels compiled "
                "from the same model and quantisation"
            )
    return infos
