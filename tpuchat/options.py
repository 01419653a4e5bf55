"""Command-line values shared by every command and the chat UI: device id
lists and sampling options, each parsed and checked in one place (no Typer or
Textual here, so the UI imports it without importing the CLI)."""

from __future__ import annotations

from typing import List, Optional

from .errors import TpuchatError


def parse_devids(text: str) -> List[int]:
    """'0' or '2,3' -> [2, 3]; TpuchatError with one line otherwise."""
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise TpuchatError(f"bad device id list {text!r}: use numbers separated by commas, like 0 or 2,3") from None
    if not ids or any(i < 0 for i in ids):
        raise TpuchatError(f"bad device id list {text!r}: use numbers separated by commas, like 0 or 2,3")
    if len(set(ids)) != len(ids):
        raise TpuchatError(f"device id list {text!r} names a device twice")
    return ids


def top1_refusal(asked: str) -> str:
    """What to say when sampling is asked of a bmodel that picks the top-1 token on the chip."""
    return (f"{asked} asks for sampling, but this bmodel computes only the top-1 token on the chip "
            "(compile it with llm_convert --do_sample to sample)")


def apply_sampling_options(settings, temperature: Optional[float] = None, top_p: Optional[float] = None,
                           top_k: Optional[int] = None, repeat_penalty: Optional[float] = None,
                           seed: Optional[int] = None) -> None:
    """Set a GenSettings from --temperature --top-p --top-k --repeat-penalty --seed (llama.cpp's and
    ollama's names).  Greedy unless --temperature > 0; the others only apply when sampling.  The
    values are checked by the settings screen's rules (config.validate); TpuchatError with one line."""
    from . import config as cfg

    others = {"--top-p": top_p, "--top-k": top_k, "--repeat-penalty": repeat_penalty, "--seed": seed}
    if temperature is not None and temperature < 0:
        raise TpuchatError("--temperature must be 0 (greedy) or above")
    if not temperature:
        given = [k for k, v in others.items() if v is not None]
        if given:
            raise TpuchatError(f"{', '.join(given)} applies when sampling: set --temperature above 0 as well")
        settings.sample = False
        return
    s = cfg.Settings(temperature=temperature, top_p=1.0 if top_p is None else top_p,
                     top_k=0 if top_k is None else top_k,
                     repetition_penalty=1.0 if repeat_penalty is None else repeat_penalty)
    problem = cfg.validate(s)
    if problem:
        flag = problem.split()[0].replace("_", "-").replace("repetition-penalty", "repeat-penalty")
        raise TpuchatError(f"--{flag}{problem[len(problem.split()[0]):]}")
    settings.sample = True
    settings.temperature, settings.top_p, settings.top_k = s.temperature, s.top_p, s.top_k
    settings.repetition_penalty = s.repetition_penalty
    settings.seed = seed


def check_can_sample(settings, desc) -> None:
    """The one-line refusal when settings ask a top-1 build to sample."""
    from .runtime.protocol import samples

    if samples(settings.sample, settings.temperature) and not desc.can_sample:
        raise TpuchatError(top1_refusal(f"--temperature {settings.temperature:g}")
                           + "; leave --temperature out for greedy answers")
