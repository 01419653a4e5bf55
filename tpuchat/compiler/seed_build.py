"""Compile a fixture the way Sophgo's older pipelines did: per-net ONNX
(seed_export.py, in the compiler venv), then `model_transform.py` and
`model_deploy.py` for each net and `model_tool --combine` into one bmodel.

Runs in the main interpreter (stdlib only); build.py calls `compile_seed`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED_EXPORT = HERE / "seed_export.py"

# The file name each pipeline gives its output (its scripts' patterns, with our model name).
OUTPUT_NAMES = {
    "sophon-demo": "qwen2-tiny_{quant}_seq{seq}_1dev.bmodel",
    "qwen-tpu": "qwen-tiny_{quant}.bmodel",
    "wizardcoder": "wizardcoder-tiny_{quant}.bmodel",
}


def jobs() -> int:
    """Nets compiled at once: $TPUCHAT_COMPILE_JOBS, else 2 (model_deploy is mostly one thread;
    the combine order does not depend on it)."""
    try:
        return max(1, int(os.environ.get("TPUCHAT_COMPILE_JOBS", "2")))
    except ValueError:
        return 2


def transform_cmd(tc, st: dict, mlir: str) -> list[str]:
    cmd = [str(tc.bin / "model_transform.py"), "--model_name", st["name"], "--model_def",
           st["model_def"], "--mlir", mlir]
    if st["input_shapes"]:
        cmd += ["--input_shapes", json.dumps(st["input_shapes"]).replace(" ", "")]
    return cmd


def deploy_cmd(tc, st: dict, mlir: str, bmodel: str, chip: str) -> list[str]:
    cmd = [str(tc.bin / "model_deploy.py"), "--mlir", mlir, "--quantize", st["quantize"], "--chip", chip,
           "--model", bmodel]
    if st["quantize"].startswith("W4"):
        cmd += ["--q_group_size", "64"]
    if st["quant_input"]:
        cmd.append("--quant_input")
    if st["quant_output"]:
        cmd.append("--quant_output")
    if st["io_alone"]:
        cmd += ["--addr_mode", "io_alone"]
    return cmd


def compile_seed(v, src: Path, out: Path, tc, run, env: dict, log_path: Path) -> Path:
    """Export and compile variant `v` (route sophon-demo | qwen-tpu) from source model `src`
    into `out`; returns the combined bmodel.  `run(cmd, log_path, env, cwd, timeout)` runs one
    logged command and raises on failure (build._run_logged)."""
    work = out / "work"
    onnx = work / "onnx"
    onnx.mkdir(parents=True)
    # (not -I: the ONNX packages come from PYTHONPATH)
    run([str(tc.python), str(SEED_EXPORT), "--format", v.route, "--model", str(src),
         "--seq", str(v.seq_length), "--out", str(onnx), "--quantize", v.quantize.upper(), *v.extra],
        log_path, env, work, 1800)
    plan = json.loads((onnx / "nets.json").read_text())

    def compile_net(n: int, st: dict) -> str:
        st = dict(st, model_def=str(onnx / st["model_def"]))
        stem = f"{n:02d}_{st['name']}"
        net_dir = work / stem  # each net in its own dir: the tools write fixed-name files
        net_dir.mkdir()
        net_log = work / f"{stem}.log"
        try:
            run(transform_cmd(tc, st, f"{stem}.mlir"), net_log, env, net_dir, 1800)
            run(deploy_cmd(tc, st, f"{stem}.mlir", f"{stem}.bmodel", v.chip), net_log, env, net_dir, 1800)
        finally:
            with open(log_path, "a") as fh:
                fh.write(net_log.read_text(errors="replace"))
        return str(net_dir / f"{stem}.bmodel")

    with ThreadPoolExecutor(max_workers=jobs()) as pool:
        parts = list(pool.map(lambda a: compile_net(*a), enumerate(plan["steps"])))
    name = OUTPUT_NAMES[v.route].format(quant=v.quantize, seq=v.seq_length)
    run([str(tc.model_tool), "--combine", *parts, "-o", str(out / name)], log_path, env, work, 600)
    with open(out / "model_info.txt", "w") as fh:
        proc = subprocess.run([str(tc.model_tool), "--info", str(out / name)], stdout=fh,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"model_tool --info failed ({proc.returncode}) on {out / name}")
    (out / "nets.json").write_text(json.dumps(plan, indent=1) + "\n")
    shutil.copy2(onnx / "replay.json", out / "replay.json")
    shutil.rmtree(work)
    return out / name
