"""`tpuchat bench`: FTL and tokens/s over several runs, device vs host time,
FTL per turn of a conversation with and without KV reuse, and FTL for a
short and a long prompt (dynamic builds compute only the real length), and
with --prefix-file the FTL of questions about a shared document with its KV
rows pinned on the device and without."""

import statistics
from typing import List, Optional, Sequence

from .chat.oneshot import check_fits, encode_prompt
from .chat.session import ModelSpec, open_chat_model
from .runtime.client import DoneEvent

# What each figure of a run covers (printed under the table, and in --json as "covers").
COVERS = {
    "ftl_s": "prompt in to first token out: the prefill call in the engine worker",
    "tokens_per_s": "tokens after the first per second of decode-call time in the worker (with lookup, chunk "
                    "calls too)",
    "device_ms_per_token": "per token after the first, the time inside runtime calls on the device (or simulator)",
    "host_us_per_token": "per decode step, all host time of a token: worker loop and shim, the pipe, and "
                         "this process receiving it (time between two tokens' arrivals minus device time)",
    "worker_host_us_per_token": "the worker's share of host_us_per_token (decode call outside the device, "
                                "the loop around it)",
    "launches_per_token": "runtime net launches per token after the first",
    "copies_per_token": "host<->device copies per token after the first",
    "passes_per_token": "weight passes per token after the first: a decode step reads every weight once (1.0); a "
                        "lookup chunk reads the layers once and the head once per row (its share of the weights "
                        "read from the file); below 1 when drafted tokens are accepted. On a board decode is bound "
                        "by reading weights, so this predicts the speed-up; the simulator's wall times do not",
}

TURN_QUESTIONS = [
    "请使用python写一段冒泡排序算法。",
    "Explain how it works, step by step.",
    "Now make it sort in descending order.",
    "What is its time complexity?",
    "Write a test for it.",
]


def _spread(values: List[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _run(client, ids, n, reuse=True, lookup=True):
    toks, stats = [], None
    for ev in client.generate(ids, n, (), None, reuse, lookup=lookup):
        if isinstance(ev, DoneEvent):
            stats = ev.stats.to_dict()
        else:
            toks.append(ev.id)
    return toks, stats


def _turns(client, tok, turns: int, max_new_tokens: int, limit: int) -> List[dict]:
    """FTL of each turn of one conversation, keeping the cache vs recomputing it."""
    messages, rows = [], []
    for t in range(turns):
        messages.append({"role": "user", "content": TURN_QUESTIONS[t % len(TURN_QUESTIONS)]})
        ids = tok.encode_chat(messages)
        if len(ids) + max_new_tokens > limit:
            break
        # The conversation starts from an empty cache (the timed runs used the same first question).
        answer, with_reuse = _run(client, ids, max_new_tokens, reuse=t > 0)
        _, fresh = _run(client, ids, max_new_tokens, reuse=False)
        rows.append({"turn": t + 1, "prompt_tokens": len(ids), "reused_tokens": with_reuse["reused_tokens"],
                     "ftl_reuse_s": with_reuse["ftl_s"], "ftl_fresh_s": fresh["ftl_s"]})
        messages.append({"role": "assistant", "content": tok.decode(answer)})
    return rows


def _lengths(client, short_ids: List[int], seq_len: int) -> List[dict]:
    long_ids = (short_ids * (seq_len // max(1, len(short_ids)) + 1))[: max(len(short_ids), seq_len * 9 // 10)]
    rows = []
    for ids in (short_ids, long_ids):
        _, st = _run(client, ids, 1, reuse=False)
        rows.append({"prompt_tokens": len(ids), "ftl_s": st["ftl_s"]})
    return rows


def _shared_prefix(client, tok, doc: str, other_ids: List[int], limit: int) -> dict:
    """FTL of questions about a shared document, each asked after another
    conversation took the cache: with the document's rows pinned, and not."""
    from .chat.session import system_prefix_ids

    pin = client.pin_prefix(system_prefix_ids(tok, doc))
    rows = []
    for pinned in (True, False):
        if not pinned:
            client.pin_prefix([])
        for q in TURN_QUESTIONS[:2]:
            ids = tok.encode_chat([{"role": "user", "content": q}], system=doc)
            if len(ids) + 2 > limit:
                break
            _run(client, other_ids, 1, reuse=False)  # someone else's conversation
            _, st = _run(client, ids, 1)
            rows.append({"pinned": pinned, "prompt_tokens": len(ids), "reused_tokens": st["reused_tokens"],
                         "ftl_s": st["ftl_s"]})
    return {"prefix_tokens": pin["tokens"], "pin_s": pin["seconds"], "questions": rows}


def run_bench(model: str, devids: Sequence[int], lib_dir: Optional[str], tokenizer_dir: Optional[str],
              prompt: str, runs: int, max_new_tokens: int, turns: int = 3, lengths: bool = True,
              shared_doc: Optional[str] = None, lookup: bool = True) -> dict:
    chat_model = open_chat_model(ModelSpec(model, devids, lib_dir, tokenizer_dir))
    # The runs below drive the engine client itself: they need knobs a chat never turns
    # (recompute the whole prompt, no stop on end-of-turn tokens).
    tok, client, desc = chat_model.tok, chat_model.client, chat_model.desc
    records = []
    try:
        ids = encode_prompt(tok, prompt, True, None)
        check_fits(len(ids), desc)
        for _ in range(runs):
            # A fixed number of tokens per run (no stop on eos), each from a
            # fresh cache, keeps runs comparable.
            records.append(_run(client, ids, max_new_tokens, reuse=False, lookup=lookup)[1])
        # Lookup decoding gives the same tokens: one plain run shows what it saved.
        plain = _run(client, ids, max_new_tokens, reuse=False, lookup=False)[1] if lookup and desc.block_kv else None
        turn_rows = _turns(client, tok, turns, min(max_new_tokens, 16), desc.kv_len) if turns else []
        length_rows = _lengths(client, ids, desc.seq_len) if lengths else []
        shared = _shared_prefix(client, tok, shared_doc, ids, desc.kv_len) if shared_doc else None
    finally:
        chat_model.close()
    keys = ("ftl_s", "tokens_per_s", "device_ms_per_token", "host_us_per_token", "worker_host_us_per_token",
            "passes_per_token")
    return {
        "model": model.rsplit("/", 1)[-1],
        "runtime": desc.runtime.kind,
        "devices": list(devids),
        "dynamic": desc.dynamic,
        "prompt": prompt,
        "prompt_tokens": len(ids),
        "new_tokens": max_new_tokens,
        "runs": records,
        **{k: _spread([r[k] for r in records]) for k in keys},
        "launches_per_token": records[-1]["launches_per_token"],
        "copies_per_token": records[-1]["copies_per_token"],
        "lookup": _lookup_summary(records, plain) if lookup and desc.block_kv else None,
        "turns": turn_rows,
        "prompt_lengths": length_rows,
        "shared_prefix": shared,
        "covers": COVERS,
    }


def _lookup_summary(records: List[dict], plain: dict) -> dict:
    """What prompt-lookup decoding did over the timed runs, and the plain run beside them."""
    chunks = sum(r["lookup_chunks"] for r in records)
    accepted = sum(r["lookup_accepted"] for r in records)
    return {
        "chunks_per_run": chunks / len(records),
        "drafted_per_chunk": sum(r["lookup_drafted"] for r in records) / chunks if chunks else 0.0,
        "accepted_per_chunk": accepted / chunks if chunks else 0.0,
        "without": {k: plain[k] for k in ("tokens_per_s", "passes_per_token", "device_ms_per_token",
                                          "launches_per_token")},
    }
