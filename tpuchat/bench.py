"""`tpuchat bench`: FTL and tokens/s over several runs, device vs host time."""

import statistics
from typing import List, Optional, Sequence

from .chat.oneshot import check_fits, encode_prompt
from .runtime.client import DoneEvent, EngineClient


def _spread(values: List[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_bench(model: str, devids: Sequence[int], lib_dir: Optional[str], tokenizer_dir: Optional[str],
              prompt: str, runs: int, max_new_tokens: int) -> dict:
    from .runtime.bmodel_file import check_bmodel_file
    from .text import find_tokenizer_dir, load_tokenizer

    check_bmodel_file(model)
    tok = load_tokenizer(find_tokenizer_dir(tokenizer_dir, model))
    ids = encode_prompt(tok, prompt, True, None)
    records = []
    with EngineClient() as client:
        desc = client.open(model, devids, lib_dir)
        check_fits(len(ids), desc)
        for _ in range(runs):
            # A fixed number of tokens per run (no stop on eos) keeps runs comparable.
            for ev in client.generate(ids, max_new_tokens, ()):
                if isinstance(ev, DoneEvent):
                    records.append(ev.stats)
    keys = ("ftl_s", "tokens_per_s", "device_ms_per_token", "host_us_per_token")
    return {
        "model": model.rsplit("/", 1)[-1],
        "runtime": desc["runtime"]["kind"],
        "devices": list(devids),
        "prompt": prompt,
        "prompt_tokens": len(ids),
        "new_tokens": max_new_tokens,
        "runs": records,
        **{k: _spread([r[k] for r in records]) for k in keys},
        "launches_per_token": records[-1]["launches_per_token"],
        "copies_per_token": records[-1]["copies_per_token"],
    }
