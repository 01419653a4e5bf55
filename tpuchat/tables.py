"""Human-readable tables for info, bench and doctor (rich)."""

from rich.console import Console
from rich.table import Table


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def _vision_text(desc) -> str:
    if desc.has_vision:
        return (f"images: {desc.vision_tiles} tiles of {desc.image_size} px "
                f"({desc.image_patches} patches each); cross-attention layers "
                f"{', '.join(map(str, desc.cross_layers))}; image K/V {_mb(desc.image_kv_bytes)}")
    if desc.cross_layers:
        return f"cross-attention layers {desc.cross_layers} but no vit net: text only"
    return "no (text only)"


def print_model_table(desc, show_nets: bool = False) -> None:
    c = Console()
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    rt = desc.runtime
    heads = ", ".join(desc.heads) or "none"
    rows = [
        ("file", f"{desc.path} ({_mb(desc.file_size)})"),
        ("convention", desc.convention or "?"),
        ("chip / toolchain", f"{desc.chip or '?'} / {desc.toolchain or '?'}"),
        ("layers", str(desc.num_layers)),
        ("prefill length S", f"{desc.seq_len}" + (f" (stages {desc.stages})" if len(desc.stages) > 1 else "")),
        ("KV length L", str(desc.kv_len)),
        ("hidden / KV heads x dim", f"{desc.hidden_size} / {desc.kv_heads} x {desc.head_dim}"),
        ("dtype / quantisation", f"{desc.dtype} / {desc.quantization}"),
        ("prefill", "dynamic (real length)" if desc.dynamic else "static (always S)"),
        ("lm_head", "top-1 token on device" if desc.lm_head == "top1" else f"logits ({desc.vocab_size} wide)"),
        ("heads", heads),
        ("history prefill (block_kv)", "yes" if desc.block_kv else "no"),
        ("sampling", "available" if desc.can_sample else "greedy only (top-1 build)"),
        ("KV cache addressing", "io_alone (cache in block_cache IO)" if desc.addr_mode == 1 else "basic (own buffers)"),
        ("KV cache layout", "one K|V window per layer, sliding up a row per token" if desc.kv_layout == "sliding"
         else "K and V rows by position"),
        ("KV cache size", _mb(desc.kv_cache_bytes)),
        ("devices needed", str(desc.num_device)),
    ]
    rows.append(("vision", _vision_text(desc)))
    for i, d in enumerate(desc.devices):
        mem = "memory unknown (simulator)" if d.mem_total_mb <= 0 else f"{d.mem_used_mb} / {d.mem_total_mb} MB used"
        if desc.num_device > 1 and d.kv_heads:
            first = i * d.kv_heads
            heads = f"{first}" if d.kv_heads == 1 else f"{first}-{first + d.kv_heads - 1}"
            mem = f"KV heads {heads} of {desc.kv_heads} ({_mb(d.kv_cache_bytes)}); {mem}"
        rows.append((f"device {d.devid}", mem))
    if rt:
        rows.append(("runtime", f"{rt.kind} {rt.version or ''} at {rt.path}"))
    for k, v in rows:
        t.add_row(k, v)
    c.print(t)
    c.print(f"[dim]nets:[/dim] {', '.join(desc.nets)}")


def print_bench_table(r: dict) -> None:
    c = Console()
    t = Table(title=f"tpuchat bench · {r['runtime']} · devices {','.join(map(str, r['devices']))}")
    for col in ("model", "FTL (s)", "tokens/s", "device ms/token", "host µs/token", "of it worker µs", "calls/token",
                "passes/token"):
        t.add_column(col, justify="right" if col != "model" else "left")

    def fmt(key, spec):
        s = r[key]
        return f"{s['median']:{spec}} [dim]({s['min']:{spec}}–{s['max']:{spec}})[/dim]"

    t.add_row(
        r["model"],
        fmt("ftl_s", ".3f"),
        fmt("tokens_per_s", ".2f"),
        fmt("device_ms_per_token", ".1f"),
        fmt("host_us_per_token", ".0f"),
        fmt("worker_host_us_per_token", ".0f") if "worker_host_us_per_token" in r else "?",
        f"{r['launches_per_token']:.0f} launches + {r['copies_per_token']:.0f} copies",
        fmt("passes_per_token", ".2f") if "passes_per_token" in r else "?",
    )
    c.print(t)
    lk = r.get("lookup")
    if lk:
        w = lk["without"]
        c.print(f"lookup decoding: {lk['chunks_per_run']:.1f} chunks per run, {lk['accepted_per_chunk']:.2f} of "
                f"{lk['drafted_per_chunk']:.2f} drafted tokens accepted per chunk · without it (one run): "
                f"{w['tokens_per_s']:.2f} tokens/s, {w['passes_per_token']:.2f} passes/token, "
                f"{w['launches_per_token']:.0f} launches/token")
    c.print(
        f"[dim]{len(r['runs'])} runs · prompt {r['prompt_tokens']} tokens · {r['new_tokens']} new tokens each · "
        "median (min–max)[/dim]"
    )
    names = {"ftl_s": "FTL", "tokens_per_s": "tokens/s", "device_ms_per_token": "device ms/token",
             "host_us_per_token": "host µs/token", "worker_host_us_per_token": "of it worker µs",
             "launches_per_token": "launches", "copies_per_token": "copies", "passes_per_token": "passes/token"}
    for key, text in r.get("covers", {}).items():
        c.print(f"[dim]{names.get(key, key)}: {text}[/dim]")


def print_reuse_tables(r: dict) -> None:
    c = Console()
    if r.get("turns"):
        t = Table(title="multi-turn: first-token latency per turn")
        for col in ("turn", "prompt tokens", "reused from cache", "FTL with reuse (s)", "FTL recomputed (s)"):
            t.add_column(col, justify="right")
        for row in r["turns"]:
            t.add_row(str(row["turn"]), str(row["prompt_tokens"]), str(row["reused_tokens"]),
                      f"{row['ftl_reuse_s']:.3f}", f"{row['ftl_fresh_s']:.3f}")
        c.print(t)
    if r.get("prompt_lengths"):
        t = Table(title="prompt length vs first-token latency" + (" (dynamic build)" if r.get("dynamic") else " (static build: always computes S)"))
        t.add_column("prompt tokens", justify="right")
        t.add_column("FTL (s)", justify="right")
        for row in r["prompt_lengths"]:
            t.add_row(str(row["prompt_tokens"]), f"{row['ftl_s']:.3f}")
        c.print(t)
    sp = r.get("shared_prefix")
    if sp:
        t = Table(title=f"shared prefix of {sp['prefix_tokens']} tokens (pinned in {sp['pin_s']:.3f} s): "
                        "a question after another conversation")
        for col in ("prefix pinned", "prompt tokens", "reused", "FTL (s)"):
            t.add_column(col, justify="right")
        for row in sp["questions"]:
            t.add_row("yes" if row["pinned"] else "no", str(row["prompt_tokens"]), str(row["reused_tokens"]),
                      f"{row['ftl_s']:.3f}")
        c.print(t)
