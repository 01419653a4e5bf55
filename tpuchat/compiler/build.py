"""Build (and cache) the tiny test/demo bmodels with TPU-MLIR's `llm_convert`.

Runs in the main interpreter (stdlib + platformdirs only); the compiler and
torch live in the venv managed by `toolchain`, started as subprocesses only
when something has to be built.

    python -m tpuchat.compiler.build [variant ...]     # all variants by default

Layout under `<cache>/models/` (`<cache>` = `$TPUCHAT_CACHE` or the user
cache dir):

    src/<arch>-<dtype>-<hash>/<arch>-tiny/   the Hugging Face source model
    <variant>-<hash>/                        one compiled variant:
        <name>.bmodel                        the bmodel (timestamp dropped from llm_convert's name)
        config/                              tokenizer + config files (llm_convert copies them)
        build.json                           manifest
        llm_convert.log                      the compiler's output
        reference/<key>.json                 cached transformers reference results

`<hash>` covers only what the variant's output depends on (see
`variant_sources`): the compiler's pinned requirements, the source-model
script, the scripts of the variant's own route (llm_convert, the vision
driver, or the seed pipelines' ONNX exporter) and the variant's parameters.
So an edit to one route rebuilds only its fixtures; an unchanged call returns
at once.  Bump OUTPUT_LAYOUT when build.py itself changes what lands in a
variant's directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import toolchain

HERE = Path(__file__).resolve().parent
TINYMODELS = HERE / "tinymodels.py"
REFERENCE = HERE / "reference.py"
CONVERT_DRIVER = HERE / "convert_driver.py"
SEED_EXPORT = HERE / "seed_export.py"
SEED_BUILD = HERE / "seed_build.py"
SEED_REPLAY = HERE / "seed_replay.py"
# LLM-TPU's share-cache layout: its own exporter/replay/compile module (which imports the three above).
SEED_SHARE = HERE / "seed_share.py"
# Routes that compile per-net ONNX as Sophgo's older pipelines did (seed_build.py, seed_share.py).
SEED_ROUTES = ("sophon-demo", "qwen-tpu", "wizardcoder", "share-cache")
# The source-model script of each architecture (tiny_bigcode.py builds on tinymodels.py).
TINY_BIGCODE = HERE / "tiny_bigcode.py"

# Bump when build.py changes the files it leaves in a variant's directory
# (everything else that shapes a fixture is hashed by content: see variant_sources).
OUTPUT_LAYOUT = 1

SEQ_LENGTH = 256
CHIP = "bm1684x"

# Which variant `demo` resolves to.
DEMO_ALIAS = "qwen2-bf16"


class BuildError(RuntimeError):
    """A fixture could not be built."""


@dataclass(frozen=True)
class Variant:
    name: str
    arch: str  # qwen2 | llama | mllama | gpt_bigcode
    dtype: str  # dtype of the source model: bf16 | f16
    quantize: str  # llm_convert -q
    seq_length: int = SEQ_LENGTH
    extra: tuple[str, ...] = field(default_factory=tuple)  # more llm_convert flags
    chip: str = CHIP
    toolchain: str = "main"  # main | multidev (TPU-MLIR 1.24, for --num_device N)
    # llm_convert, or a seed pipeline's layout (SEED_ROUTES): per-net ONNX from seed_export.py
    # compiled by model_transform/model_deploy/model_tool; `extra` is then seed_export.py flags.
    route: str = "llm_convert"

    def convert_args(self, model_dir: Path, out_dir: Path) -> list[str]:
        return ["-m", str(model_dir), "-s", str(self.seq_length), "-q", self.quantize,
                "-c", self.chip, "-o", str(out_dir), *self.extra]


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("qwen2-bf16", "qwen2", "bf16", "bf16"),
    Variant("qwen2-f16", "qwen2", "f16", "f16"),
    Variant("qwen2-w8bf16", "qwen2", "bf16", "w8bf16"),
    Variant("qwen2-w4bf16", "qwen2", "bf16", "w4bf16"),
    Variant("qwen2-dynamic", "qwen2", "bf16", "bf16", extra=("--dynamic",)),
    Variant("qwen2-sample", "qwen2", "bf16", "bf16", extra=("--do_sample",)),
    Variant("qwen2-history", "qwen2", "bf16", "bf16", extra=("--use_history_kv",)),
    Variant("qwen2-maxinput", "qwen2", "bf16", "bf16", extra=("--max_input_length", "64")),
    # Same weights as qwen2-bf16 with a shorter KV length: a weight-sharing family (--model a,b).
    Variant("qwen2-s128", "qwen2", "bf16", "bf16", seq_length=128),
    Variant("llama-bf16", "llama", "bf16", "bf16"),
    # Llama-3.2-Vision: a vit net and cross-attention layers (S 128 keeps the simulator quick).
    Variant("mllama", "mllama", "bf16", "bf16", seq_length=128),
    # For the wrong-chip error: a real bmodel the BM1684X runtime must refuse.
    Variant("qwen2-bm1688", "qwen2", "bf16", "bf16", chip="bm1688"),
    # A 2-device bmodel (TPU-MLIR 1.24; 1.30.2 cannot compile --num_device 2).
    # The simulator has one device: only its description and layout plan are tested.
    Variant("qwen2-2dev", "qwen2", "bf16", "bf16", extra=("--num_device", "2"), toolchain="multidev"),
    # The formats users' older bmodels have (DESIGN.md section 10), from the same tiny Qwen2.
    # sophon-demo sample/Qwen1_5: f32-logit lm_head, greedy_head, 5-input penalty_sample_head.
    Variant("seed-sophon-demo", "qwen2", "bf16", "bf16", route="sophon-demo"),
    # ... its basic-address-mode build (gen_bmodel.sh without --addr_mode io_alone)
    Variant("seed-sophon-demo-basic", "qwen2", "bf16", "bf16", route="sophon-demo", extra=("--basic",)),
    # Qwen-TPU: two-stage embedding ([1,1] then [1,SEQ]), qwen_block_N, top-1 lm_head.
    Variant("seed-qwen-tpu", "qwen2", "bf16", "bf16", route="qwen-tpu"),
    # WizardCoder (LLM-TPU models/WizardCoder): a tiny GPT-BigCode, F16 with f32 IO, basic addressing.
    Variant("seed-wizardcoder", "gpt_bigcode", "f16", "f16", route="wizardcoder"),
    # LLM-TPU share_cache_demo: shared part 128 rows, unshared part 64, KV length = share + unshare
    # (the demo's shipped bmodels have no extra decode window: the answer fills the unshared rows).
    Variant("seed-share-cache", "qwen2", "bf16", "bf16", seq_length=192, route="share-cache",
            extra=("--share", "128", "--unshare", "64")),
    # (its --dynamic 1 build, seed_share.py --dynamic, compiles but its dynamic block_N kills the
    # simulator's firmware at every length: not a fixture; the shim refuses such builds in one line)
]}
ALIASES = {"demo": DEMO_ALIAS}
NAMES = (*VARIANTS, *ALIASES)


def _log(msg: str) -> None:
    print(f"[tpuchat.compiler] {msg}", file=sys.stderr, flush=True)


def models_dir() -> Path:
    return toolchain.cache_root() / "models"


def resolve(name: str) -> Variant:
    real = ALIASES.get(name, name)
    try:
        return VARIANTS[real]
    except KeyError:
        raise BuildError(f"unknown fixture variant {name!r}; known: {', '.join(NAMES)}") from None


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _sources_hash(paths) -> str:
    return _sha(*(p.read_bytes() for p in paths))


def _requirements(v: Variant) -> tuple[str, ...]:
    if v.toolchain == "multidev":
        return toolchain.MULTIDEV_REQUIREMENTS
    if v.route in SEED_ROUTES:
        return (*toolchain.REQUIREMENTS, *toolchain.ONNX_REQUIREMENTS)
    return toolchain.REQUIREMENTS


def variant_sources(v: Variant) -> tuple[Path, ...]:
    """The scripts whose content shapes variant `v`'s output (beside its parameters):
    the source model's script and the variant's own compile route, nothing else."""
    if v.route == "share-cache":
        route: tuple[Path, ...] = (SEED_SHARE, SEED_EXPORT, SEED_BUILD)
    elif v.route in SEED_ROUTES:
        route = (SEED_EXPORT, SEED_BUILD, SEED_REPLAY)
    elif v.route != "llm_convert":
        raise BuildError(f"variant {v.name}: unknown route {v.route!r}")
    else:
        route = (CONVERT_DRIVER,) if v.arch == "mllama" else ()
    return (*_source_scripts(v.arch), *route)


def _source_scripts(arch: str) -> tuple[Path, ...]:
    return (TINYMODELS, TINY_BIGCODE) if arch == "gpt_bigcode" else (TINYMODELS,)


def variant_hash(v: Variant) -> str:
    return _sha(_sources_hash(variant_sources(v)), json.dumps(_requirements(v)), str(OUTPUT_LAYOUT),
                json.dumps(asdict(v), sort_keys=True))


def source_hash(arch: str, dtype: str) -> str:
    return _sha(_sources_hash(_source_scripts(arch)), json.dumps(toolchain.REQUIREMENTS), arch, dtype)


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _run_logged(cmd: list[str], log_path: Path, env: dict, cwd: Path, timeout: float) -> None:
    with open(log_path, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=cwd, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f} s"
    if rc != 0:
        raise BuildError(f"command failed ({rc}): {' '.join(cmd)}\n"
                         f"--- last 30 lines of {log_path} ---\n{_tail(log_path)}")


def _venv_env(tc: toolchain.Toolchain) -> dict:
    env = tc.env()
    env.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1)))
    return env


def _model_basename(arch: str) -> str:
    # llm_convert names the bmodel after the model directory.
    return f"{arch}-tiny"


def source_dir(arch: str, dtype: str, tc: toolchain.Toolchain | None = None) -> Path:
    """The Hugging Face source model for (arch, dtype), built on first use."""
    final = models_dir() / "src" / f"{arch}-{dtype}-{source_hash(arch, dtype)}"
    model = final / _model_basename(arch)
    if (final / "done").exists():
        return model
    with toolchain.file_lock(models_dir() / "src" / f".{arch}-{dtype}.lock"):
        if (final / "done").exists():
            return model
        tc = tc or toolchain.ensure(log=_log)
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        out = tmp / _model_basename(arch)
        _log(f"building tiny {arch} ({dtype}) source model")
        log_path = tmp / "tinymodels.log"
        try:
            script = [str(TINY_BIGCODE)] if arch == "gpt_bigcode" else [str(TINYMODELS), "--arch", arch]
            _run_logged([str(tc.python), "-I", *script, "--dtype", dtype, "--out", str(out)],
                        log_path, _venv_env(tc), tmp, timeout=900)
        except BuildError as exc:
            kept = _keep_failed(tmp, f"src-{arch}-{dtype}")
            raise BuildError(str(exc).replace(str(tmp), str(kept))) from None
        (tmp / "done").write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    return model


def _manifest(path: Path) -> dict | None:
    """The finished build's manifest, or None when the build is absent or incomplete."""
    try:
        data = json.loads((path / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if not (path / data.get("bmodel", "?")).is_file() or not (path / "config").is_dir():
        return None
    return data


def _keep_failed(tmp: Path, name: str) -> Path:
    """Move a failed build's dir to models/.failed-<name> (for its logs)."""
    failed = models_dir() / f".failed-{name}"
    shutil.rmtree(failed, ignore_errors=True)
    try:
        os.rename(tmp, failed)
    except OSError:
        return tmp
    return failed


def variant_path(name: str) -> Path:
    """Where `name` is (or will be) cached; does not build."""
    v = resolve(name)
    return models_dir() / f"{v.name}-{variant_hash(v)}"


def build(name: str) -> Path:
    """Build variant `name` (if not cached) and return its directory."""
    v = resolve(name)
    final = variant_path(v.name)
    if _manifest(final) is not None:
        return final
    with toolchain.file_lock(models_dir() / f".{v.name}.lock"):
        if _manifest(final) is not None:
            return final
        tc = toolchain.ensure(log=_log)
        src = source_dir(v.arch, v.dtype, tc)
        if v.toolchain == "multidev":
            tc = toolchain.ensure_multidev(log=_log)
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        args = v.convert_args(src, tmp)
        log_path = tmp / ("llm_convert.log" if v.route == "llm_convert" else "compile.log")
        t0 = time.monotonic()
        try:
            if v.route in SEED_ROUTES:
                _log(f"compiling {v.name}: per-net ONNX in the {v.route} layout")
                bmodel = _compile_seed(v, src, tmp, tc, log_path)
            else:
                _log(f"compiling {v.name}: llm_convert {' '.join(args)}")
                _run_logged(_convert_command(tc, v, args), log_path, _venv_env(tc), tmp, timeout=1800)
                bmodel = _collect_outputs(tmp, src, log_path)
            seconds = round(time.monotonic() - t0, 2)
            if v.toolchain == "multidev":
                _record_description(tc, bmodel, tmp, log_path)
        except BuildError as exc:
            kept = _keep_failed(tmp, v.name)
            raise BuildError(str(exc).replace(str(tmp), str(kept))) from None
        manifest = {
            "variant": v.name,
            "params": asdict(v),
            # as run, except that -o names the final dir (the build ran in a temp dir beside it)
            "llm_convert_args": v.convert_args(src, final) if v.route == "llm_convert" else None,
            "route": v.route,
            "seconds": seconds,
            "bmodel": bmodel.name,
            "bmodel_bytes": bmodel.stat().st_size,
            "config_dir": "config",
            "source_model": str(src),
            "tpu_mlir": (toolchain.MULTIDEV_TPU_MLIR_VERSION if v.toolchain == "multidev"
                         else toolchain.TPU_MLIR_VERSION),
            "hash": final.name.rsplit("-", 1)[1],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "build.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        _log(f"built {v.name} in {seconds} s -> {final / bmodel.name}")
    return final


def _convert_command(tc: toolchain.Toolchain, v: Variant, args: list[str]) -> list[str]:
    """llm_convert itself, or for vision models our driver around it (see convert_driver.py)."""
    if v.arch == "mllama":
        return [str(tc.python), str(CONVERT_DRIVER), *args]
    return [str(tc.llm_convert), *args]


def _compile_seed(v: Variant, src: Path, out: Path, tc: toolchain.Toolchain, log_path: Path) -> Path:
    """Per-net ONNX export + model_transform/model_deploy/model_tool (seed_build.py)."""
    from . import seed_build

    try:
        env = _venv_env(tc)
        env["PYTHONPATH"] = str(toolchain.ensure_onnx(tc, log=_log))
        if v.route == "share-cache":
            from . import seed_share

            bmodel = seed_share.compile_share(v, src, out, tc, _run_logged, env, log_path)
        else:
            bmodel = seed_build.compile_seed(v, src, out, tc, _run_logged, env, log_path)
    except RuntimeError as exc:  # BuildError included
        raise BuildError(str(exc)) from None
    _copy_config(out, src)
    return bmodel


def _collect_outputs(out: Path, src: Path, log_path: Path) -> Path:
    """Tidy llm_convert's output dir: one stable-named bmodel + config/."""
    bmodels = sorted(out.glob("*.bmodel"))
    if len(bmodels) != 1:
        raise BuildError(f"expected one .bmodel in {out}, found {[b.name for b in bmodels]}\n"
                         f"--- last 30 lines of {log_path} ---\n{_tail(log_path)}")
    bmodel = bmodels[0]
    # llm_convert appends _YYYYmmdd_HHMMSS; drop it so paths are stable.
    stem = bmodel.stem
    parts = stem.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        stem = parts[0]
    # The work folder (mlir, per-net bmodels) has the same name; remove it.
    work = out / stem
    if work.is_dir():
        shutil.rmtree(work)
    stable = out / f"{stem}.bmodel"
    os.rename(bmodel, stable)
    _copy_config(out, src)
    return stable


def _copy_config(out: Path, src: Path) -> None:
    """config/ beside the bmodel: the tokenizer and config files of the source model."""
    config = out / "config"
    config.mkdir(exist_ok=True)
    for fname in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json",
                  "special_tokens_map.json", "preprocessor_config.json", "vocab.json", "merges.txt"):
        if (src / fname).exists() and not (config / fname).exists():
            shutil.copy2(src / fname, config / fname)
    for fname in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        if not (config / fname).exists():
            raise BuildError(f"{config} lacks {fname}")


def _record_description(tc: toolchain.Toolchain, bmodel: Path, out: Path, log_path: Path) -> None:
    """Keep the compiler's own account of the nets (`model_tool --info`,
    model_info.txt) and ours (netinfo.json, read from the file as the runtime
    would show it on all its devices) beside a multi-device bmodel."""
    from ..runtime import bmodel_nets

    with open(out / "model_info.txt", "w") as fh:
        proc = subprocess.run([str(tc.model_tool), "--info", str(bmodel)], stdout=fh, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=_venv_env(tc), timeout=300)
    if proc.returncode != 0:
        raise BuildError(f"model_tool --info failed ({proc.returncode}) on {bmodel}\n{_tail(out / 'model_info.txt')}")
    desc = bmodel_nets.read(bmodel).to_dict()
    desc["path"] = bmodel.name
    (out / "netinfo.json").write_text(json.dumps(desc, indent=1) + "\n")


def build_all(names=None) -> dict[str, Path]:
    """Build every named variant (all by default); {name: dir}."""
    names = list(names) if names else list(NAMES)
    return {n: build(n) for n in names}


def manifest(name: str) -> dict:
    path = build(name)
    data = _manifest(path)
    assert data is not None
    return data


def bmodel_path(name: str) -> Path:
    path = build(name)
    return path / manifest(name)["bmodel"]


def tokenizer_dir(name: str) -> Path:
    return build(name) / "config"


def model_source_dir(name: str) -> Path:
    """The HF source model the variant was compiled from (rebuilt if it vanished)."""
    v = resolve(name)
    src = Path(manifest(name)["source_model"])
    if not (src / "config.json").exists():
        src = source_dir(v.arch, v.dtype)
    return src


def reference(name: str, ids_list: list[list[int]], max_new_tokens: int, logits: bool = False,
              quant: str | None = None) -> list[dict]:
    """Transformers' greedy continuation (float32 compute on the variant's source weights):
    per prompt `{"ids": [...], "margins": [top1-top2 logit per step], "top2": [[a, b], ...]}`.
    Exactly `max_new_tokens` tokens, eos does not stop. With logits=True each result also has
    `logits`: the full logits row of every step. quant="w4" (or "w4:GROUP", "w8") first rounds
    the decoder's Linear weights as model_deploy does. Cached per request."""
    ids_list = [[int(i) for i in ids] for ids in ids_list]
    key = _sha(REFERENCE.read_bytes(), json.dumps([ids_list, int(max_new_tokens), bool(logits), quant]))
    requests = [{"ids": ids, "max_new_tokens": int(max_new_tokens), "logits": bool(logits), "quant": quant}
                for ids in ids_list]
    return _run_reference(name, requests, key)


def reference_requests(name: str, requests: list[dict]) -> list[dict]:
    """reference.py's results for raw requests (e.g. with an image for mllama variants:
    see reference.py), cached per request list."""
    return _run_reference(name, requests, _sha(REFERENCE.read_bytes(), json.dumps(requests, sort_keys=True)))


def _run_reference(name: str, requests: list[dict], key: str) -> list[dict]:
    """reference.py on the variant's source model, cached in the variant's dir under `key`."""
    cache = build(name) / "reference" / f"{key}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    tc = toolchain.ensure(log=_log)
    proc = subprocess.run([str(tc.python), "-I", str(REFERENCE), str(model_source_dir(name))],
                          input=json.dumps(requests), capture_output=True, text=True,
                          env=_venv_env(tc), timeout=1800)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BuildError(f"reference.py failed ({proc.returncode}) for {name}\n{tail}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, cache)
    return results


def reference_greedy(name: str, ids_list: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Transformers' greedy token ids for each prompt (see `reference`)."""
    return [r["ids"] for r in reference(name, ids_list, max_new_tokens)]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tpuchat.compiler.build",
                                 description="Build the tiny test bmodels; prints NAME<TAB>DIR.")
    ap.add_argument("variants", nargs="*", metavar="variant", help=f"default: all ({', '.join(NAMES)})")
    args = ap.parse_args(argv)
    try:
        for n in args.variants or NAMES:
            print(f"{n}\t{build(n)}", flush=True)
    except (BuildError, toolchain.ToolchainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
