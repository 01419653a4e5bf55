"""Find the libsophon runtime: explicit setting, a board's install, or the simulator.

Search order: an explicit option, $TPUCHAT_LIBSOPHON, the libsophon install
of a board or PCIe host (/opt/sophon/libsophon-current/lib), then the
BM1684X simulator that `tpuchat sim install` puts in the user cache.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import RuntimeNotFound
from ..paths import simulator_dir

SIMULATOR_VERSION = "1.30.2"  # the tpu-mlir wheel the simulator libraries come from
SIMULATOR_FILES = ("libbmrt.so.1.0", "libbmlib.so.0", "libcmodel.so")
BOARD_LIB_DIR = Path("/opt/sophon/libsophon-current/lib")

_BMRT_NAMES = ("libbmrt.so.1.0", "libbmrt.so.1", "libbmrt.so")
_BMLIB_NAMES = ("libbmlib.so.0", "libbmlib.so")


@dataclass(frozen=True)
class RuntimeLocation:
    path: Path
    kind: str  # "hardware" or "simulator"
    source: str  # which rule chose it
    version: Optional[str]


def bmrt_library(d) -> Optional[Path]:
    """The libbmrt file in directory `d` that the shim would open, if any."""
    return next((Path(d) / n for n in _BMRT_NAMES if (Path(d) / n).exists()), None)


def _has_libs(d: Path) -> bool:
    return bmrt_library(d) is not None and any((d / n).exists() for n in _BMLIB_NAMES)


def _is_simulator(d: Path) -> bool:
    return (d / "libcmodel.so").exists()


def _libsophon_version(d: Path) -> Optional[str]:
    # /opt/sophon/libsophon-current -> libsophon-0.5.1
    try:
        real = d.resolve()
    except OSError:
        return None
    for part in real.parts:
        if part.startswith("libsophon-") and part != "libsophon-current":
            return part[len("libsophon-"):]
    return None


def candidates(explicit: Optional[str] = None) -> List[Tuple[Path, str]]:
    out = []
    if explicit:
        out.append((Path(explicit).expanduser(), "--libsophon option"))
    env = os.environ.get("TPUCHAT_LIBSOPHON")
    if env:
        out.append((Path(env).expanduser(), "TPUCHAT_LIBSOPHON"))
    out.append((BOARD_LIB_DIR, "libsophon install"))
    out.append((simulator_dir(SIMULATOR_VERSION), "simulator cache"))
    return out


def describe(d: Path, source: str) -> RuntimeLocation:
    if _is_simulator(d):
        return RuntimeLocation(d, "simulator", source, f"tpu-mlir {SIMULATOR_VERSION} simulator")
    return RuntimeLocation(d, "hardware", source, _libsophon_version(d))


def find_runtime(explicit: Optional[str] = None) -> RuntimeLocation:
    """The first directory that holds libbmrt and libbmlib, or a clear error."""
    tried = []
    for d, source in candidates(explicit):
        if _has_libs(d):
            return describe(d, source)
        tried.append(f"{d} ({source})")
        if source in ("--libsophon option", "TPUCHAT_LIBSOPHON"):
            # An explicit choice that is wrong is an error, not a hint to look elsewhere.
            raise RuntimeNotFound(f"no libbmrt/libbmlib in {d} (given by {source})")
    raise RuntimeNotFound(
        "no Sophgo runtime found (looked in "
        + ", ".join(tried)
        + "); on a board install libsophon, elsewhere run: tpuchat sim install"
    )
