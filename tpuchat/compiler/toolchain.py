"""The TPU-MLIR compiler environment used to build test and demo bmodels.

`ensure()` makes sure a Python 3.10 virtual environment with Sophgo's TPU-MLIR
(`llm_convert`), torch and transformers exists under the tpuchat cache and
returns where it is. It installs everything itself on a fresh Debian machine
(GNU parallel through apt-get, the Python packages through pip) and is
idempotent: a marker file in the venv records a finished install, so later
calls return at once.

Runs in the main interpreter; imports only the standard library and
platformdirs.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TPU_MLIR_VERSION = "1.30.2"

# Everything llm_convert and our builder scripts need inside the venv.
# tpu-mlir pins transformers (5.6.2), numpy, protobuf, ... itself; its entry
# points import pkg_resources, which setuptools 81 removed.
REQUIREMENTS = (
    f"tpu-mlir=={TPU_MLIR_VERSION}",
    "torch==2.11.0",
    "psutil",
    "flatbuffers==24.12.23",
    "tokenizers",
    "setuptools<81",
)

# The wheel bundles an older glibc that breaks the tools on this system.
BUNDLED_GLIBC = ("libc.so.6", "libm.so.6", "libpthread.so.0")

MARKER_NAME = ".tpuchat-toolchain.json"


class ToolchainError(RuntimeError):
    """The compiler environment could not be set up."""


def cache_root() -> Path:
    """`$TPUCHAT_CACHE`, else the platform's user cache dir for tpuchat."""
    env = os.environ.get("TPUCHAT_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    try:
        import platformdirs
    except ImportError:  # same answer as platformdirs on Linux
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
        return Path(base) / "tpuchat"
    return Path(platformdirs.user_cache_dir("tpuchat"))


def compiler_dir() -> Path:
    return cache_root() / "compiler"


def venv_dir() -> Path:
    return compiler_dir() / "venv"


@dataclass(frozen=True)
class Toolchain:
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def llm_convert(self) -> Path:
        return self.bin / "llm_convert"

    @property
    def model_tool(self) -> Path:
        return self.bin / "model_tool"

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / "python3.10" / "site-packages"

    def env(self, pythonpath: str | os.PathLike | None = None) -> dict[str, str]:
        """Environment for running the venv's tools: its bin first on PATH
        (llm_convert shells out to model_deploy, tpuc-opt, parallel, ...)."""
        env = dict(os.environ)
        for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONNOUSERSITE"):
            env.pop(key, None)
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "/usr/bin:/bin")])
        env["PYTHONNOUSERSITE"] = "1"
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        # Offline: the builder never talks to a model hub.
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env


def _log(log, msg: str) -> None:
    if log is not None:
        log(msg)


def _marker_payload(requirements=REQUIREMENTS) -> dict:
    return {"requirements": list(requirements), "glibc_fix": list(BUNDLED_GLIBC)}


def _is_ready(venv: Path, requirements=REQUIREMENTS) -> bool:
    marker = venv / MARKER_NAME
    if not (venv / "bin" / "python").exists():
        return False
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return data == _marker_payload(requirements)


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], log_path: Path | None = None, env=None) -> None:
    """Run cmd; on failure raise ToolchainError with the output's tail."""
    if log_path is None:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        out = proc.stdout
    else:
        with open(log_path, "a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env)
        out = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-30:])
        raise ToolchainError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def ensure_parallel(log=None) -> None:
    """llm_convert runs its compile jobs through GNU parallel."""
    if shutil.which("parallel"):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise ToolchainError("GNU parallel is required by llm_convert; install the 'parallel' package")
    _log(log, "installing GNU parallel with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run([apt, "install", "-y", "parallel"], env=env)
    except ToolchainError:
        _run([apt, "update"], env=env)
        _run([apt, "install", "-y", "parallel"], env=env)
    if not shutil.which("parallel"):
        raise ToolchainError("apt-get installed 'parallel' but it is not on PATH")


def _python_version(exe: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None  # e.g. a pyenv shim for a version that is not selected
    try:
        major, minor = out.stdout.split()
        return int(major), int(minor)
    except ValueError:
        return None


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _version_key(path: str) -> tuple:
    name = Path(path).parent.parent.name  # .../versions/3.10.13/bin/python3.10
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def find_python310() -> str:
    """A Python 3.10 interpreter (TPU-MLIR's wheel supports no other)."""
    candidates: list[str] = []
    if os.environ.get("TPUCHAT_PYTHON310"):
        candidates.append(os.environ["TPUCHAT_PYTHON310"])
    which = shutil.which("python3.10")
    if which:
        candidates.append(which)
    root = _pyenv_root()
    if root is not None:
        found = glob.glob(str(root / "versions" / "3.10.*" / "bin" / "python3.10"))
        candidates.extend(sorted(found, key=_version_key, reverse=True))
    candidates.extend(["/usr/bin/python3.10", "/usr/local/bin/python3.10"])
    for exe in candidates:
        if os.path.exists(exe) and _python_version(exe) == (3, 10):
            return exe
    raise ToolchainError(
        "TPU-MLIR needs Python 3.10 and none was found (looked for python3.10 on PATH and in "
        "$(pyenv root)/versions/3.10.*). Get one with `pyenv install 3.10` (or "
        "`apt-get install python3.10 python3.10-venv` where your distribution has it), or point "
        "TPUCHAT_PYTHON310 at a python3.10 executable."
    )


def _fix_bundled_glibc(tc: Toolchain, log=None) -> None:
    third = tc.site_packages / "tpu_mlir" / "lib" / "third_party"
    if not third.is_dir():
        raise ToolchainError(f"tpu_mlir is not installed in {tc.venv} (no {third})")
    aside = third.parent / "third_party.glibc-disabled"
    for name in BUNDLED_GLIBC:
        src = third / name
        if src.exists() or src.is_symlink():
            aside.mkdir(exist_ok=True)
            _log(log, f"moving bundled {name} out of {third}")
            os.replace(src, aside / name)


def _create_venv(venv: Path, log_path: Path, log=None) -> None:
    py = find_python310()
    _log(log, f"creating the compiler venv at {venv} with {py}")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run([py, "-m", "venv", str(venv)], log_path)
    except ToolchainError as exc:
        raise ToolchainError(
            f"{exc}\n(creating a venv needs the venv/ensurepip module; on Debian/Ubuntu install "
            "python3.10-venv)"
        ) from None


def ensure(log=None) -> Toolchain:
    """Return the compiler toolchain, installing it first if needed.

    `log` is an optional callable taking one progress message.
    """
    return _ensure_venv(venv_dir(), REQUIREMENTS, TPU_MLIR_VERSION, ".install.lock", "install.log", log)


def _ensure_venv(venv: Path, requirements, version: str, lock_name: str, log_name: str, log=None) -> Toolchain:
    tc = Toolchain(venv)
    if _is_ready(venv, requirements) and shutil.which("parallel"):
        return tc
    with file_lock(compiler_dir() / lock_name):
        if _is_ready(venv, requirements) and shutil.which("parallel"):
            return tc
        ensure_parallel(log)
        log_path = compiler_dir() / log_name
        log_path.write_text("")
        marker = venv / MARKER_NAME
        if marker.exists():
            marker.unlink()
        if _python_version(str(tc.python)) != (3, 10):
            _create_venv(venv, log_path, log)
        _log(log, f"installing TPU-MLIR {version}, torch and transformers into {venv} "
                  "(several GB, a few minutes; log: " + str(log_path) + ")")
        _run([str(tc.python), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
             log_path, env=tc.env())
        _fix_bundled_glibc(tc, log)
        # A quick sanity check: the converter's entry point starts.
        _run([str(tc.llm_convert), "--help"], log_path, env=tc.env())
        # What was installed, for the record (pip freeze).
        freeze = subprocess.run([str(tc.python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                capture_output=True, text=True, env=tc.env())
        if freeze.returncode == 0:
            (venv / "requirements.lock").write_text(freeze.stdout)
        marker.write_text(json.dumps(_marker_payload(requirements)))
    return tc


# --- the multi-device toolchain ------------------------------------------
# TPU-MLIR 1.30.2's llm_convert fails with --num_device 2; 1.24 (its
# llm_convert passes --num_device to model_deploy) is the newest release that
# compiles multi-device LLM bmodels.  It lives in its own venv beside the
# main one; it pins transformers 4.51.1 and numpy 1.24.3 itself.
MULTIDEV_TPU_MLIR_VERSION = "1.24"
MULTIDEV_REQUIREMENTS = (
    f"tpu-mlir=={MULTIDEV_TPU_MLIR_VERSION}",
    "torch==2.11.0",
    "psutil",
    "flatbuffers==24.12.23",
    "tokenizers",
    "setuptools<81",
)


def multidev_venv_dir() -> Path:
    return compiler_dir() / f"venv-{MULTIDEV_TPU_MLIR_VERSION}"


def ensure_multidev(log=None) -> Toolchain:
    """The TPU-MLIR 1.24 toolchain (for `--num_device N` builds), installed on first use."""
    return _ensure_venv(multidev_venv_dir(), MULTIDEV_REQUIREMENTS, MULTIDEV_TPU_MLIR_VERSION,
                        f".install-{MULTIDEV_TPU_MLIR_VERSION}.lock",
                        f"install-{MULTIDEV_TPU_MLIR_VERSION}.log", log)


# --- ONNX import, for the seed pipelines' per-net route ------------------
# model_transform.py needs onnx, onnxruntime and onnxsim for ONNX nets (the
# wheel's `onnx` extra, with its pins); torch's exporter needs onnx.  They go
# into a directory of their own, put on PYTHONPATH only for those builds, so
# the llm_convert venv (and its readiness marker) stays exactly as it is.
ONNX_REQUIREMENTS = (
    "onnx==1.14.1",
    "onnxruntime==1.16.3",
    "onnxsim==0.4.17",
    # onnxruntime's dependencies that the venv lacks (the rest it has)
    "coloredlogs==15.0.1",
    "humanfriendly==10.0",
)


def onnx_dir() -> Path:
    return compiler_dir() / "onnx-overlay"


def ensure_onnx(tc: Toolchain, log=None) -> Path:
    """The directory holding ONNX_REQUIREMENTS (installed on first use with the venv's pip)."""
    target = onnx_dir()
    marker = target / MARKER_NAME
    payload = json.dumps(list(ONNX_REQUIREMENTS))

    def ready() -> bool:
        try:
            return marker.read_text() == payload
        except OSError:
            return False

    if ready():
        return target
    with file_lock(compiler_dir() / ".install-onnx.lock"):
        if ready():
            return target
        log_path = compiler_dir() / "install-onnx.log"
        log_path.write_text("")
        shutil.rmtree(target, ignore_errors=True)
        _log(log, f"installing the ONNX importer into {target} (log: {log_path})")
        # --no-deps: everything else they need is already in the venv, at the versions tpu-mlir pins
        _run([str(tc.python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
              "--target", str(target), *ONNX_REQUIREMENTS], log_path, env=tc.env())
        _run([str(tc.python), "-c", "import onnx, onnxruntime, onnxsim"], log_path, env=tc.env(target))
        marker.write_text(payload)
    return target


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    pick = ensure_multidev if "--multidev" in args else ensure
    tc = pick(log=lambda m: print(m, file=sys.stderr))
    print(tc.venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
