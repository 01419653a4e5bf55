"""Run TPU-MLIR's `llm_convert` with run-time workarounds for vision models.

Runs INSIDE the compiler venv, as a plain script, with llm_convert's own
arguments:

    venv/bin/python convert_driver.py -m MODEL_DIR -s 128 -q bf16 -c bm1684x -o OUT

Why: llm_convert 1.30.2 cannot convert Llama-3.2-Vision (mllama) as shipped.
Every generated MLIR file gets a `tpuc-opt --shape-infer` sanity check, and
for the `vit` graph that check (a) runs before the vit weights file it
refers to is written and (b) fails shape inference even with the weights,
although `model_deploy` then compiles the same file fine.  This driver makes
that one check non-fatal for `vit` (it is logged) and otherwise runs the
unmodified converter; the installed package is never edited.
"""

from __future__ import annotations

import os
import sys


def _inner(args: list[str]) -> int:
    import importlib
    import runpy

    # The converter's own module (TPUC_ROOT/python is on PYTHONPATH); `llm` re-exports
    # the class under the module's name, so ask for the module itself.
    lc = importlib.import_module("llm.LlmConverter")

    original = lc.LlmConverter.save_mlir_module

    def save_mlir_module(mlir_module, name: str):
        try:
            original(mlir_module, name)
        except RuntimeError as exc:
            if name != "vit":
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "shape-infer failed"
            print(f"[tpuchat convert_driver] ignoring the vit shape-infer check: {first}", flush=True)

    lc.LlmConverter.save_mlir_module = staticmethod(save_mlir_module)
    script = os.path.join(os.environ["TPUC_ROOT"], "python", "tools", "llm_convert.py")
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inner"]:
        return _inner(argv[1:])
    # Importing tpu_mlir sets TPUC_ROOT, PATH, PYTHONPATH and LD_LIBRARY_PATH for its
    # tools; the dynamic loader reads LD_LIBRARY_PATH only at start, hence the re-exec.
    import tpu_mlir  # noqa: F401

    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--inner", *argv], dict(os.environ))
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
