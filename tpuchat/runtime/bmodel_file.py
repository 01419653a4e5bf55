"""Check a .bmodel file before the runtime sees it.

libbmrt may abort() on a damaged file, so the cheap structural checks run in
Python first: the header's magic and sizes, and the chip the model targets.
Layout: u32 magic 0xFF55AAEE, u32 header size, u32 flatbuffer size, u64
binary size; then the flatbuffer (net descriptions, chip name) and the
weights/kernels.  The three sizes add up to the file size.
"""

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ModelError

MAGIC = 0xFF55AAEE
SUPPORTED_CHIP = "BM1684X"
_CHIP_RE = re.compile(rb"\x00(BM1684X|BM1684|BM1688|BM1690|CV18[0-9][0-9A-Z]*|SG2380|SGTPUV8|MARS3)\x00")
_VERSION_RE = re.compile(rb"\x00(\d+\.\d+[^\x00]{2,80})\x00")


@dataclass(frozen=True)
class BmodelFile:
    path: Path
    size: int
    chip: Optional[str]
    toolchain: Optional[str]


def check_bmodel_file(path) -> BmodelFile:
    """Check one bmodel; for `a.bmodel,b.bmodel` (several bmodels of the same
    weights) check each and describe the first."""
    from .weights import split_models

    parts = split_models(path)
    if len(parts) > 1:
        return [check_bmodel_file(x) for x in parts][0]
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"bmodel not found: {p}")
    if p.is_dir():
        raise ModelError(f"{p} is a directory, not a .bmodel file")
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(20)
            if size == 0:
                raise ModelError(f"{p} is empty (0 bytes): copy the bmodel again")
            if len(head) < 20:
                raise ModelError(f"{p} is too short to be a bmodel ({size} bytes)")
            magic, header_size, fb_size, bin_size = struct.unpack("<IIIQ", head)
            if magic != MAGIC:
                raise ModelError(f"{p} is not a bmodel (its first bytes are not the bmodel magic number)")
            expected = header_size + fb_size + bin_size
            if size < expected:
                raise ModelError(
                    f"{p} is truncated: the header promises {expected} bytes but the file has {size}; "
                    "copy it again"
                )
            f.seek(header_size)
            fb = f.read(min(fb_size, 64 << 20))
    except OSError as e:
        raise ModelError(f"cannot read {p}: {e.strerror or e}") from None
    chip = _CHIP_RE.search(fb)
    chip_name = chip.group(1).decode() if chip else None
    if chip_name and chip_name != SUPPORTED_CHIP:
        raise ModelError(f"{p} was compiled for {chip_name}; tpuchat runs {SUPPORTED_CHIP} bmodels")
    version = _VERSION_RE.search(fb)
    return BmodelFile(p, size, chip_name, version.group(1).decode(errors="replace") if version else None)
