"""Prompt-lookup decoding through the device path: chunks, accepted drafts and
weight passes per token, with lookup off, gated (the default) and pinned on.

    python bench/lookup_device.py                      # the qwen2-history test fixture on the simulator
    python bench/lookup_device.py --model m.bmodel     # any bmodel with block_kv nets (a board: real timings)

Workloads are token ids (the fixture is a tiny random-weight model with a toy
tokenizer): a prompt the model answers with a cycle (drafts accepted), the
same prompt holding the first 8 answer tokens (the rest of the answer is
drafted from the prompt), and a prompt of distinct ids (little to draft,
like plain text).  Every run checks that the tokens equal lookup-off's.

passes/token counts weight passes per token after the first (a decode step is
1; a chunk reads the layers once and the head once per row), which is what a
board's decode speed follows.  On the simulator, wall times (tokens/s) follow
the C model's compute, not memory traffic, and the machine's load: they say
nothing about a board, and the gate, which uses measured times, acts on them
(here a chunk costs more wall time than the decode steps it saves, so the
gated mode pauses lookup).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CYCLE = [316, 194, 139, 73, 98, 446, 349, 6] * 3  # tests/sim/test_lookup_device.py's PROMPT


def run(client, ids, n, lookup):
    from tpuchat.runtime.client import DoneEvent

    out, st = [], None
    t0 = time.perf_counter()
    for ev in client.generate(ids, n, (), None, False, lookup=lookup):
        if isinstance(ev, DoneEvent):
            st = ev.stats
        else:
            out.append(ev.id)
    return out, st, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a bmodel with block_kv nets (default: the qwen2-history fixture)")
    ap.add_argument("--devid", type=int, default=0)
    ap.add_argument("-n", "--new-tokens", type=int, default=16)
    args = ap.parse_args()

    from tpuchat.runtime.client import EngineClient

    if args.model:
        path, lib = args.model, None
    else:
        from tpuchat.compiler.build import bmodel_path, build
        from tpuchat.runtime import simulator

        build("qwen2-history")
        path, lib = str(bmodel_path("qwen2-history")), str(simulator.install(quiet=True))
    client = EngineClient(Path("/tmp") / "tpuchat-lookup-bench.log")
    try:
        desc = client.open(path, [args.devid], lib)
        if not desc.block_kv:
            sys.exit(f"{desc.name} has no block_kv nets: lookup decoding does not apply")
        first, _, _ = run(client, CYCLE, 8, False)
        workloads = {"cycle": CYCLE, "answer quoted in the prompt": CYCLE + first[:8],
                     "distinct ids": list(range(20, 20 + len(CYCLE)))}
        print(f"{desc.name} ({desc.runtime.kind if desc.runtime else '?'}), {args.new_tokens} new tokens per run, "
              "drafts of up to 4 by 3..1-gram match\n")
        print("| workload | lookup | same tokens | chunks | drafted | accepted | accepted/chunk | passes/token | "
              "launches/token | tokens/s | wall s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, ids in workloads.items():
            base = None
            for mode in (False, True, "always"):
                out, st, wall = run(client, ids, args.new_tokens, mode)
                base = out if base is None else base
                per_chunk = st.lookup_accepted / st.lookup_chunks if st.lookup_chunks else 0.0
                label = {False: "off", True: "gated", "always": "always"}[mode]
                print(f"| {name} | {label} | {'yes' if out == base else 'NO'} | {st.lookup_chunks} | "
                      f"{st.lookup_drafted} | {st.lookup_accepted} | {per_chunk:.2f} | {st.passes_per_token:.3f} | "
                      f"{st.launches_per_token:.2f} | {st.tokens_per_s:.3f} | {wall:.1f} |", flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    main()
