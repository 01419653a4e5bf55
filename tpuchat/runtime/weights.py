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

The description is walked with bmodel_nets' reader, by field index (TPU-MLIR's bmodel.fbs:
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
from .bmodel_nets import model_description

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
    root, binary_base = model_description(p)
    try:
        info = WeightInfo(str(p), 0)
        for net in root.tables(4):
            name = net.string(0) or ""
            params = net.tables(3)
            if not params:
                continue
            if name == "block_cache_0":
                tensors = params[0].tables(0)
                if len(tensors) > 3:
                    shapes = tensors[3].tables(5)
                    dims = shapes[0].scalars(0, "Q") if shapes else ()
                    info.kv_len = int(dims[1]) if len(dims) > 1 else 0
            cm = params[0].table(4)
            if cm is None:
                continue
            binary = cm.inline_struct(2, "<QQ")
            if not binary or not binary[1]:
                continue
            locs = [(loc.string(0) or "", loc.scalar(1, "Q"), loc.scalar(2, "Q")) for loc in cm.tables(3)]
            info.blocks[name] = WeightBlock(name, binary_base + binary[0], binary[1], bytes(cm.scalars(1, "B")), locs)
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
