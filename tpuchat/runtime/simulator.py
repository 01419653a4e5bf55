"""`tpuchat sim install`: Sophgo's BM1684X simulator, from PyPI's tpu-mlir wheel.

The wheel carries libbmrt/libbmlib built over a C model of the chip
(libcmodel.so).  Only those three files (19 MB) are kept, in the user cache
dir; the 312 MB wheel is fetched with pip (its own progress bar) and removed.
"""

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional

from ..errors import TpuchatError
from ..paths import cache_dir
from .libfind import SIMULATOR_FILES, SIMULATOR_VERSION, simulator_dir

WHEEL_MEMBER_DIR = "tpu_mlir/lib/"


def installed(version: str = SIMULATOR_VERSION) -> bool:
    d = simulator_dir(version)
    return all((d / f).exists() for f in SIMULATOR_FILES)


def _find_wheel(where: Path, version: str) -> Optional[Path]:
    found = sorted(where.glob(f"tpu_mlir-{version}-*.whl"))
    return found[0] if found else None


def download_wheel(dest: Path, version: str = SIMULATOR_VERSION, quiet: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    # The wheel is built for Python 3.10 only; we never install it, just unpack.
    cmd = [sys.executable, "-m", "pip", "download", f"tpu-mlir=={version}", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.10", "-d", str(dest)]
    if quiet:
        cmd.append("-q")
    r = subprocess.run(cmd)
    wheel = _find_wheel(dest, version)
    if r.returncode != 0 or wheel is None:
        raise TpuchatError(f"could not download tpu-mlir {version} with pip (exit code {r.returncode})")
    return wheel


def extract(wheel: Path, target: Path, on_progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Copy the three simulator libraries out of the wheel, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sim-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [z.getinfo(WHEEL_MEMBER_DIR + f) for f in SIMULATOR_FILES]
            total = sum(m.file_size for m in members)
            done = 0
            for m in members:
                with z.open(m) as src, open(tmp / Path(m.filename).name, "wb") as dst:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        dst.write(chunk)
                        done += len(chunk)
                        if on_progress:
                            on_progress(done, total)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except KeyError as e:
        raise TpuchatError(f"{wheel.name} does not contain {e}; is it a tpu-mlir wheel?") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def install(force: bool = False, wheel: Optional[Path] = None, quiet: bool = False) -> Path:
    """Install the simulator libraries; returns their directory.  Processes
    installing at once (parallel test workers) take turns: one downloads."""
    import fcntl

    target = simulator_dir(SIMULATOR_VERSION)
    if installed() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed() and not force:
            return target
        return _install(target, wheel, quiet)


def _install(target: Path, wheel: Optional[Path], quiet: bool) -> Path:
    dl = cache_dir() / "dl"
    downloaded = False
    if wheel is None:
        wheel = _find_wheel(dl, SIMULATOR_VERSION)
    if wheel is None:
        wheel = download_wheel(dl, quiet=quiet)
        downloaded = True
    if quiet:
        extract(wheel, target)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        with Progress(TextColumn("unpacking simulator"), BarColumn(), DownloadColumn()) as bar:
            task = bar.add_task("unpack", total=None)
            extract(wheel, target, lambda done, total: bar.update(task, completed=done, total=total))
    if downloaded:
        wheel.unlink()
    return target
