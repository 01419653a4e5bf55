"""The `tpuchat` command line.

Commands stay thin: they parse options, call the runtime/text/chat layers
through the engine client, and turn TpuchatError into one line on stderr and
a non-zero exit code.
"""

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import EngineCrashed, TpuchatError
from .options import parse_devids

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    invoke_without_command=True,
    help="Chat with LLMs compiled to Sophgo BM1684X bmodels (on a board, a PCIe card or the simulator).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
sim_app = typer.Typer(help="The BM1684X simulator (Sophgo's runtime over a C model of the chip).")
app.add_typer(sim_app, name="sim")

DEFAULT_BENCH_PROMPT = "请使用python写一段冒泡排序算法。"

MODEL_OPT = typer.Option(..., "--model", "-m", help="Path to a .bmodel file; a,b for bmodels of the same "
                         "weights with different lengths (the shortest that fits answers).")
DEVID_OPT = typer.Option("0", "--devid", "-d", help="Device id(s), comma separated: 0 or 2,3.")
LIB_OPT = typer.Option(None, "--libsophon", help="Directory holding libbmrt/libbmlib (default: search).",
                       envvar="TPUCHAT_LIBSOPHON")
TOKENIZER_OPT = typer.Option(None, "--tokenizer", "-t",
                             help="Tokenizer dir (default: config/ beside the bmodel, then ./token_config).")
PREFIX_OPT = typer.Option(None, "--prefix-file",
                          help="A shared document or long system prompt (UTF-8 text): it becomes the system "
                               "prompt, computed once and kept on the device for every conversation.")
TEMPERATURE_OPT = typer.Option(None, "--temperature", help="Sample at this temperature (0 or absent: greedy). "
                               "Needs a bmodel compiled with --do_sample.")
TOP_P_OPT = typer.Option(None, "--top-p", help="Nucleus sampling: keep the most likely tokens up to this "
                         "probability mass, in (0, 1] (with --temperature).")
TOP_K_OPT = typer.Option(None, "--top-k", help="Keep the K most likely tokens, 0 off (with --temperature).")
REPEAT_PENALTY_OPT = typer.Option(None, "--repeat-penalty", help="Repetition penalty, 1.0 off (with --temperature).")
SEED_OPT = typer.Option(None, "--seed", help="Seed for reproducible sampling (default: random).")
LOOKUP_OPT = typer.Option(True, "--lookup/--no-lookup",
                          help="Prompt-lookup decoding on bmodels with block_kv nets (llm_convert --use_history_kv): "
                               "guess the next tokens from earlier in the conversation and check several in one "
                               "pass. The same tokens; fewer passes when the answer repeats its input. Greedy "
                               "answers only; it switches itself off while it does not pay.")


def _sampling(temperature, top_p, top_k, repeat_penalty, seed, lookup: bool = True):
    """GenSettings from the sampling options and --lookup (TpuchatError with one line for a bad value)."""
    from .chat.session import GenSettings
    from .options import apply_sampling_options

    settings = GenSettings(lookup=lookup)
    apply_sampling_options(settings, temperature, top_p, top_k, repeat_penalty, seed)
    return settings


PREFIX_LIMIT = 4 << 20  # bytes; far beyond any bmodel's context, small enough to read at once


def read_prefix_file(path: Optional[str], system: Optional[str]) -> Optional[str]:
    """The --prefix-file text (None without one); one-line errors for a bad file."""
    if path is None:
        return None
    if system is not None:
        raise TpuchatError("give either --system or --prefix-file (the file's text becomes the system prompt)")
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise TpuchatError(f"--prefix-file {path}: is a directory, not a text file")
        if p.stat().st_size > PREFIX_LIMIT:
            raise TpuchatError(f"--prefix-file {path}: larger than {PREFIX_LIMIT >> 20} MB; no bmodel holds that much")
        data = p.read_bytes()
    except OSError as e:
        raise TpuchatError(f"--prefix-file {path}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TpuchatError(f"--prefix-file {path}: not UTF-8 text") from None
    if not text:
        raise TpuchatError(f"--prefix-file {path}: the file is empty")
    return text


def _err(msg: str) -> None:
    sys.stderr.write(f"tpuchat: error: {msg}\n")


def _fail(e: TpuchatError) -> "typer.Exit":
    _err(str(e))
    tail = getattr(e, "log_tail", "")
    if isinstance(e, EngineCrashed) and tail:
        sys.stderr.write("last lines of the engine log:\n" + tail + "\n")
    return typer.Exit(e.exit_code)


@app.callback()
def _root(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Open the chat with this .bmodel."),
    devid: str = DEVID_OPT,
    tokenizer: Optional[str] = TOKENIZER_OPT,
    libsophon: Optional[str] = LIB_OPT,
    prefix_file: Optional[str] = PREFIX_OPT,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
):
    """With --model and no command, opens the chat."""
    if version:
        from . import __version__

        typer.echo(f"tpuchat {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        typer.echo(ctx.get_help())
        typer.echo("\nFirst time here? `tpuchat demo` sets up the simulator and a tiny model and opens the chat.")
        raise typer.Exit(0)
    raise typer.Exit(_chat(model, devid, tokenizer, libsophon, None, None, prefix_file=prefix_file))


def _use_tui(plain: bool) -> bool:
    """The Textual UI unless --plain, or stdin/stdout is not a terminal (pipes, scripts, dumb terminals)."""
    if plain:
        return False
    try:
        if not (sys.stdout.isatty() and sys.stdin.isatty()):
            return False
    except (AttributeError, ValueError):
        return False
    import os

    return os.environ.get("TERM", "") != "dumb"


def _chat(model, devid, tokenizer, libsophon, max_new_tokens, system, plain: bool = False,
          prefix_file: Optional[str] = None, settings=None) -> int:
    """settings: sampling from the command line (GenSettings), for the plain chat; the UI
    takes its own from the settings file and screen, and refuses them."""
    try:
        devids = parse_devids(devid)
        shared = read_prefix_file(prefix_file, system)
        if shared is not None:
            system = shared
        if _use_tui(plain):
            if settings is not None and settings.sample:
                raise TpuchatError("--temperature and the other sampling options go with --plain; the chat UI "
                                   "takes them from its settings (F4) or /set")
            if settings is not None and not settings.lookup:
                raise TpuchatError("--no-lookup goes with --plain (and run, bench); the chat UI always uses "
                                   "lookup decoding where the bmodel allows it")
            from .tui import run_tui

            # Errors opening the model are shown inside the UI (it never exits on them).
            return run_tui(model, devids, libsophon, tokenizer, max_new_tokens, system,
                           shared_prefix=shared is not None)
        from .chat.plain import run_plain_chat

        return run_plain_chat(model, devids, libsophon, tokenizer, max_new_tokens or 512, system,
                              shared_prefix=shared is not None, settings=settings)
    except TpuchatError as e:
        raise _fail(e)


@app.command()
def chat(
    model: str = MODEL_OPT,
    devid: str = DEVID_OPT,
    tokenizer: Optional[str] = TOKENIZER_OPT,
    libsophon: Optional[str] = LIB_OPT,
    plain: bool = typer.Option(False, "--plain", help="Line-based chat instead of the full-screen UI "
                               "(also used when stdin/stdout is not a terminal)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", min=1,
                                                 help="Longest answer (default: the settings file, else 512)."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    prefix_file: Optional[str] = PREFIX_OPT,
    temperature: Optional[float] = TEMPERATURE_OPT,
    top_p: Optional[float] = TOP_P_OPT,
    top_k: Optional[int] = TOP_K_OPT,
    repeat_penalty: Optional[float] = REPEAT_PENALTY_OPT,
    seed: Optional[int] = SEED_OPT,
    lookup: bool = LOOKUP_OPT,
):
    """Multi-turn chat: the full-screen UI (streaming Markdown, live FTL and tokens/s, saved
    conversations, model and device pickers), or --plain for a line-based chat (which also
    takes the sampling options)."""
    try:
        settings = _sampling(temperature, top_p, top_k, repeat_penalty, seed, lookup)
    except TpuchatError as e:
        raise _fail(e)
    raise typer.Exit(_chat(model, devid, tokenizer, libsophon, max_new_tokens, system, plain, prefix_file, settings))


@app.command()
def web(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Open the chat with this .bmodel."),
    devid: str = DEVID_OPT,
    tokenizer: Optional[str] = TOKENIZER_OPT,
    libsophon: Optional[str] = LIB_OPT,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8080, "--port", "-p", help="Port to listen on."),
    public_url: Optional[str] = typer.Option(None, "--public-url",
                                             help="URL the browser uses, when behind a proxy or SSH tunnel."),
):
    """The same chat UI in a browser (textual-serve).  Each browser tab runs its own chat.

    Binds to 127.0.0.1: from another machine use an SSH tunnel
    (ssh -L 8080:127.0.0.1:8080 board) rather than a public address."""
    from .tui.web import serve

    try:
        parse_devids(devid)
        raise typer.Exit(serve(model, devid, tokenizer, libsophon, host, port, public_url))
    except TpuchatError as e:
        raise _fail(e)


@app.command()
def demo(
    devid: str = DEVID_OPT,
    build_only: bool = typer.Option(False, "--build-only", help="Prepare everything, do not open the chat."),
):
    """First run: the simulator if no Sophgo runtime is found, a tiny demo model, then the chat.

    The demo model has random weights (it answers gibberish); it shows the
    whole path on any PC.  Building it installs TPU-MLIR's compiler once
    (a Python 3.10 venv of about 6 GB, a few minutes)."""
    from .runtime import simulator
    from .runtime.libfind import find_runtime

    try:
        try:
            loc = find_runtime()
            typer.echo(f"runtime: {loc.kind} at {loc.path}")
        except TpuchatError:
            typer.echo("no Sophgo runtime found: installing the BM1684X simulator")
            simulator.install()
        from .compiler.build import bmodel_path, build

        typer.echo("demo model: building (or reusing) a tiny random-weight Qwen2 with TPU-MLIR's llm_convert")
        build("demo")
        path = bmodel_path("demo")
        typer.echo(f"demo model: {path}")
    except TpuchatError as e:
        raise _fail(e)
    except RuntimeError as e:  # the builder's BuildError
        _err(str(e).splitlines()[0])
        raise typer.Exit(1)
    if build_only:
        return
    raise typer.Exit(_chat(str(path), devid, None, None, 128, None))


# --------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------


@app.command()
def info(
    model: str = typer.Argument(..., help="Path to a .bmodel file (a,b: bmodels of the same weights)."),
    devid: str = DEVID_OPT,
    libsophon: Optional[str] = LIB_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    nets: bool = typer.Option(False, "--nets", help="Also list every net's inputs and outputs."),
):
    """What a bmodel is: lengths, layers, dtype, heads, devices, memory."""
    from .runtime.client import EngineClient

    try:
        with EngineClient() as client:
            desc = client.open(model, parse_devids(devid), libsophon)
    except TpuchatError as e:
        raise _fail(e)
    if as_json:
        typer.echo(json.dumps(desc.to_dict(), indent=2, ensure_ascii=False))
        return
    from .tables import print_model_table

    print_model_table(desc, show_nets=nets)
    if desc.family:
        _print_family(desc.family)


def _print_family(fam: dict) -> None:
    """`tpuchat info a,b`: every member and what they share."""
    typer.echo("\nbmodels of the same weights (the shortest that fits each conversation answers):")
    for m in fam["members"]:
        typer.echo(f"  {m['path']}: S {m['seq_len']}, L {m['kv_len']}, loaded in {m['load_s']:.3f} s")
    weights = fam["members"][0].get("weight_bytes")
    if fam["shared_weights"]:
        typer.echo(f"  one weight area of {fam['weight_bytes'] / 2**20:.1f} MB shared by all")
    else:
        typer.echo("  one bmodel is on the device at a time (each switch loads it whole)")
        if fam.get("share_note"):
            typer.echo(f"  no shared weight area: {fam['share_note']}")
    if weights:
        typer.echo(f"  weights: {weights / 2**20:.1f} MB")


# --------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------


def _read_prompt(prompt: Optional[str]) -> str:
    if prompt is not None and prompt != "-":
        return prompt
    if sys.stdin is None or sys.stdin.isatty():
        raise TpuchatError("no prompt: pass it as an argument or pipe it on stdin")
    return sys.stdin.read()


@app.command()
def run(
    prompt: Optional[str] = typer.Argument(None, help="The prompt; read from stdin when omitted or '-'."),
    model: str = MODEL_OPT,
    tokenizer: Optional[str] = TOKENIZER_OPT,
    devid: str = DEVID_OPT,
    libsophon: Optional[str] = LIB_OPT,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", min=1, help="Stop after this many tokens."),
    no_template: bool = typer.Option(False, "--no-template", help="Tokenize the prompt as-is (raw completion)."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop on end-of-turn tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
    image: Optional[str] = typer.Option(None, "--image", "-i",
                                        help="An image file to ask about (vision bmodels, e.g. Llama-3.2-Vision)."),
    temperature: Optional[float] = TEMPERATURE_OPT,
    top_p: Optional[float] = TOP_P_OPT,
    top_k: Optional[int] = TOP_K_OPT,
    repeat_penalty: Optional[float] = REPEAT_PENALTY_OPT,
    seed: Optional[int] = SEED_OPT,
    lookup: bool = LOOKUP_OPT,
):
    """One answer to one prompt, streamed, with FTL and tokens/s."""
    from .chat.oneshot import one_shot

    try:
        settings = _sampling(temperature, top_p, top_k, repeat_penalty, seed, lookup)
        text = _read_prompt(prompt)
        result = one_shot(
            model=model,
            prompt=text,
            devids=parse_devids(devid),
            lib_dir=libsophon,
            tokenizer_dir=tokenizer,
            max_new_tokens=max_new_tokens,
            use_template=not no_template,
            system=system,
            ignore_eos=ignore_eos,
            on_text=None if as_json else _stream_out,
            image=image,
            settings=settings,
        )
    except TpuchatError as e:
        raise _fail(e)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise typer.Exit(130)
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        sys.stderr.write(_stats_line(result) + "\n")


def _stream_out(delta: str) -> None:
    sys.stdout.write(delta)
    sys.stdout.flush()


def _stats_line(r: dict) -> str:
    from .chat.statsline import format_stats

    return format_stats(r, "run")


# --------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------


@app.command()
def bench(
    model: str = MODEL_OPT,
    tokenizer: Optional[str] = TOKENIZER_OPT,
    devid: str = DEVID_OPT,
    libsophon: Optional[str] = LIB_OPT,
    prompt: str = typer.Option(DEFAULT_BENCH_PROMPT, "--prompt", "-p", help="Prompt to answer."),
    runs: int = typer.Option(3, "--runs", "-r", min=1, help="Measured runs."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=2, help="Tokens per run."),
    turns: int = typer.Option(3, "--turns", min=0, help="Conversation turns timed with and without KV reuse."),
    lengths: bool = typer.Option(True, "--lengths/--no-lengths", help="Time a short and a long prompt."),
    prefix_file: Optional[str] = typer.Option(None, "--prefix-file",
                                              help="Also time questions about this shared document, with its "
                                                   "KV rows pinned on the device and without."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    lookup: bool = LOOKUP_OPT,
):
    """FTL and tokens/s over several runs (median, min, max), with the device/host split and weight
    passes per token (with --lookup on a block_kv bmodel, also one run without it); FTL per turn
    with and without KV reuse; FTL for a short and a long prompt."""
    from .bench import run_bench

    try:
        report = run_bench(model, parse_devids(devid), libsophon, tokenizer, prompt, runs, max_new_tokens,
                           turns, lengths, read_prefix_file(prefix_file, None), lookup=lookup)
    except TpuchatError as e:
        raise _fail(e)
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        from .tables import print_bench_table, print_reuse_tables

        print_bench_table(report)
        print_reuse_tables(report)


# --------------------------------------------------------------------------
# doctor, sim
# --------------------------------------------------------------------------


@app.command()
def doctor(libsophon: Optional[str] = LIB_OPT):
    """Which runtime is found, its devices and memory, and what is missing."""
    from .doctor import run_doctor

    raise typer.Exit(run_doctor(libsophon))


@sim_app.command("install")
def sim_install(
    force: bool = typer.Option(False, "--force", help="Reinstall even if present."),
    wheel: Optional[str] = typer.Option(None, "--wheel", help="Use an already downloaded tpu-mlir wheel."),
):
    """Download Sophgo's BM1684X simulator libraries into the user cache."""
    from pathlib import Path

    from .runtime import simulator

    try:
        if simulator.installed() and not force:
            typer.echo(f"simulator already installed in {simulator.simulator_dir(simulator.SIMULATOR_VERSION)}")
            return
        target = simulator.install(force=force, wheel=Path(wheel) if wheel else None)
    except TpuchatError as e:
        raise _fail(e)
    typer.echo(f"simulator installed in {target}")


# --------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------


@app.command()
def serve(
    model: str = MODEL_OPT,
    devid: List[str] = typer.Option(["0"], "--devid", "-d",
                                    help="Device id(s) of one engine, comma separated (0, or 2,3 for a 2-chip "
                                         "bmodel); repeat for one engine per device group: -d 0 -d 1 -d 2."),
    tokenizer: Optional[str] = TOKENIZER_OPT,
    libsophon: Optional[str] = LIB_OPT,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port (0: any free port)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TPUCHAT_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on /v1 requests."),
    insecure: bool = typer.Option(False, "--insecure",
                                  help="Allow listening on a non-loopback address without an API key."),
    queue: int = typer.Option(8, "--queue", min=0, help="Requests that may wait for the engine (429 beyond)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model id clients use (default: the file name)."),
    greedy_fallback: bool = typer.Option(False, "--greedy-fallback",
                                         help="On a top-1 bmodel, answer sampling requests greedily "
                                              "instead of refusing them."),
    prefix_file: Optional[str] = typer.Option(
        None, "--prefix-file", help="A shared document or long system prompt (UTF-8 text), computed once and "
                                    "kept on the device: requests without a system message get it as theirs."),
    image_dir: Optional[str] = typer.Option(None, "--image-dir",
                                            help="Vision bmodels: also accept image_url parts naming local files "
                                                 "(paths or file:// URLs) under this dir; data: URLs are always "
                                                 "accepted, http(s) never."),
):
    """OpenAI-compatible HTTP API: /v1/chat/completions and /v1/completions (streaming or not),
    /v1/models, /v1/info, /health, /metrics.  Several --devid: one engine per device group."""
    from .server import serve as run_server

    try:
        shared = read_prefix_file(prefix_file, None)
        code = run_server(model, [parse_devids(d) for d in devid], libsophon, tokenizer, host, port, api_key, insecure,
                          queue, name, greedy_fallback, shared_prefix=shared, image_dir=image_dir)
    except TpuchatError as e:
        raise _fail(e)
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
