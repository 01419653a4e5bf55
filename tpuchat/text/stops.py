"""When an answer ends: stop token ids from a model's config files, and stop strings.

A model may define several end tokens and none of the files lists them all: Qwen3's
generation_config says [151645, 151643], Qwen-7B v1's says only 151643 (<|endoftext|>) although
its chat turns end with <|im_end|>, Llama3 needs <|eot_id|> 128009 besides <|end_of_text|> 128001.
So we take the union of every source (see Tokenizer._collect_stop_ids).
"""

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .templates import read_json

# Tokens that end a turn or a text in the families we support; used only when the tokenizer
# defines them as special tokens (a plain vocabulary entry with the same text is not a stop).
KNOWN_END_TOKENS = (
    "<|im_end|>",  # ChatML (Qwen)
    "<|endoftext|>",  # Qwen, GPT-2, GPT-BigCode / WizardCoder
    "<|eot_id|>",  # Llama 3 end of turn
    "<|end_of_text|>",  # Llama 3 end of text
    "<|eom_id|>",  # Llama 3.1 end of message (tool call)
    "<end_of_turn>",  # Gemma
    "</s>",  # Llama 2, Mistral
)

# Sampling settings that generation_config.json may carry; the chat layer may use them as defaults.
GENERATION_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "do_sample")


def _ids(value: Any) -> List[int]:
    """eos_token_id may be an int, a list of ints, or absent/null."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def config_eos_ids(directory: Union[str, Path]) -> Set[int]:
    """eos ids from generation_config.json and config.json (also a vision model's nested
    text_config / llm_config), each may be a single id or a list."""
    directory = Path(directory)
    found = set()  # type: Set[int]
    for name in ("generation_config.json", "config.json"):
        data = read_json(directory / name)
        found.update(_ids(data.get("eos_token_id")))
        for nested in ("text_config", "llm_config"):
            sub = data.get(nested)
            if isinstance(sub, dict):
                found.update(_ids(sub.get("eos_token_id")))
    return found


def generation_defaults(directory: Union[str, Path]) -> Dict[str, Any]:
    """The sampling settings present in generation_config.json (only the keys it has)."""
    data = read_json(Path(directory) / "generation_config.json")
    return {k: data[k] for k in GENERATION_KEYS if k in data}


def find_stop_string(text: str, stops: Iterable[str]) -> Optional[Tuple[int, str]]:
    """(index, stop) of the earliest stop string in text, or None."""
    best = None  # type: Optional[Tuple[int, str]]
    for stop in stops:
        if not stop:
            continue
        i = text.find(stop)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, stop)
    return best


class StopStringMatcher:
    """Cuts a text stream at the first stop string, even one split across pushes.

    push() returns the text that is safe to show: it holds back a tail that could be the start
    of a stop string, and once a stop string is complete it returns the text before it and sets
    `stopped`. flush() releases the held tail at the end of a turn that did not stop.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.stopped = False
        self.matched = None  # type: Optional[str]
        self._pending = ""

    def push(self, text: str) -> str:
        if self.stopped or not text:
            return ""
        buf = self._pending + text
        hit = find_stop_string(buf, self.stops)
        if hit is not None:
            self.stopped, self.matched = True, hit[1]
            self._pending = ""
            return buf[: hit[0]]
        keep = self._partial_tail(buf)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:n]):
                    longest = n
                    break
        return longest
