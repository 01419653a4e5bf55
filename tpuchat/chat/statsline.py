"""How an answer's GenerationStats read, in every front end: the one place that
words them.  Styles differ only in how much they say and in their separator:

  footer    the chat UI under an answer (Rich markup)      FTL 0.42 s · 18.5 tok/s · 45 tokens · stopped
  status    the chat UI's status bar (a list of parts)     FTL 0.42s, 18.5 tok/s
  plain     `chat --plain` after an answer                 FTL 0.420 s (3 of 9 prompt tokens cached) | TPS 18.50 tokens/s
  run       `tpuchat run` on stderr                        ... | device 1.0 ms/token | host 50 µs/token
                                                           (+ | lookup 6 chunks, 14/20 drafted accepted, 0.45 passes/token)
  markdown  a conversation's export                        FTL 0.420 s · 18.50 tokens/s · 45 tokens · stopped
"""

from __future__ import annotations

from typing import List, Optional, Union

from ..runtime.protocol import GenerationStats

Stats = Union[GenerationStats, dict, None]


def as_stats(st: Stats) -> GenerationStats:
    """A GenerationStats; from a dict only the known keys, the rest unknown (None)."""
    if isinstance(st, GenerationStats):
        return st
    return GenerationStats.partial(**{k: v for k, v in (st or {}).items()
                                      if k in GenerationStats.__dataclass_fields__})


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _reason(st: GenerationStats, style: str, stopped: bool, error: Optional[str], live: bool) -> Optional[str]:
    reason = st.stop_reason
    markup = style == "footer"
    if error:
        return f"[b red]failed[/]: {_esc(error)}" if markup else f"error: {error}"
    if reason == "cancelled" or (stopped and not live and reason != "context_full"):
        return "[b yellow]stopped[/]" if markup else "stopped"
    if reason == "context_full":
        return "[b yellow]context full[/] (/clear to start over)" if markup else "context full: /clear to start over"
    if reason == "max_tokens":
        return "max tokens"
    return None


def stats_parts(st: Stats, style: str = "footer", stopped: bool = False, error: Optional[str] = None,
                model: Optional[str] = None, live: bool = False) -> List[str]:
    st = as_stats(st)
    p: List[str] = []
    if style == "status":
        if st.ftl_s is not None:
            p += [f"FTL {st.ftl_s:.2f}s", f"{st.tokens_per_s or 0.0:.1f} tok/s"]
        return p
    if style == "run":
        if st.vit_s:
            p.append(f"vit {st.vit_s:.3f} s (image encoder, before the prompt)")
        p += [f"FTL {st.ftl_s:.3f} s", f"TPS {st.tokens_per_s:.2f} tokens/s",
              f"{st.prompt_tokens} prompt + {st.new_tokens} new tokens ({st.stop_reason})",
              f"device {st.device_ms_per_token:.1f} ms/token", f"host {st.host_us_per_token:.0f} µs/token"]
        if st.lookup_chunks:
            p.append(f"lookup {st.lookup_chunks} chunks, {st.lookup_accepted}/{st.lookup_drafted} drafted accepted, "
                     f"{st.passes_per_token:.2f} passes/token")
        return p
    if style == "plain":
        cached = (f" ({st.reused_tokens} of {st.prompt_tokens} prompt tokens cached)" if st.reused_tokens else "")
        reason = _reason(st, style, stopped, error, live)
        p += [f"FTL {st.ftl_s:.3f} s{cached}", f"TPS {st.tokens_per_s:.2f} tokens/s" + (f" ({reason})" if reason else "")]
        if st.lookup_chunks:
            p.append(f"lookup {st.passes_per_token:.2f} passes/token")
        return p
    precise = style == "markdown"
    if st.ftl_s is not None:
        p.append(f"FTL {st.ftl_s:.3f} s" if precise else f"FTL {st.ftl_s:.2f} s")
    if st.reused_tokens and not live and not precise:
        p.append(f"{st.reused_tokens}/{st.prompt_tokens if st.prompt_tokens is not None else '?'} prompt tokens cached")
    if st.tokens_per_s is not None:
        p.append(f"{st.tokens_per_s:.2f} tokens/s" if precise else f"{st.tokens_per_s:.1f} tok/s")
    if st.new_tokens is not None:
        p.append(f"{st.new_tokens} tokens")
    if precise:  # the export says stopped / error from the message, not the stop reason
        p += (["stopped"] if stopped else []) + ([f"error: {error}"] if error else [])
        return p
    reason = _reason(st, style, stopped, error, live)
    if reason:
        p.append(reason)
    if model and not live:
        p.append(_esc(model))
    return p


_SEPARATORS = {"footer": " · ", "markdown": " · ", "plain": " | ", "run": " | ", "status": " │ "}


def format_stats(st: Stats, style: str = "footer", stopped: bool = False, error: Optional[str] = None,
                 model: Optional[str] = None, live: bool = False) -> str:
    """One line in `style` (see the module docstring)."""
    return _SEPARATORS[style].join(stats_parts(st, style, stopped, error, model, live))
