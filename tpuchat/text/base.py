"""The one tokenizer interface the rest of tpuchat uses, and the chat logic shared by all kinds.

A concrete tokenizer provides encode/decode, its special tokens and how to render a template;
this base class adds the system prompt handling, prompt ids, the model's default system prompt
and the stop ids.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Union

from .stops import KNOWN_END_TOKENS, config_eos_ids, generation_defaults

Message = Dict[str, Any]

# Text that no template alters, used to find what a template puts around a message.
_PROBE = "tpuchatprobe7f3a"


class Tokenizer:
    """Text <-> token ids plus the model's chat format.

    Attributes set by subclasses: `kind` ("hf", "qwen-tiktoken", "gpt2-bpe"), `path` (the dir it
    was loaded from), `chat_template` (Jinja source).
    """

    kind = "base"

    def __init__(self, path: Union[str, Path], chat_template: Optional[str]):
        self.path = Path(path)
        self.chat_template = chat_template
        self._eos_ids = None  # type: Optional[Set[int]]
        self._default_system = False  # type: Any  (False = not computed yet)

    # --- what each kind implements ---------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added and special tokens included."""
        raise NotImplementedError

    @property
    def special_tokens(self) -> Dict[str, int]:
        """Special (control) tokens: text -> id."""
        raise NotImplementedError

    @property
    def bos_token(self) -> Optional[str]:
        return None

    @property
    def eos_token(self) -> Optional[str]:
        return None

    def token_to_id(self, token: str) -> Optional[int]:
        raise NotImplementedError

    def _render(self, messages: List[Message], add_generation_prompt: bool, **template_kwargs: Any) -> str:
        """The template rendered as transformers would; template_kwargs become template
        variables (e.g. Qwen3's enable_thinking=False)."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------

    @property
    def bos_id(self) -> Optional[int]:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    def with_system(self, messages: Sequence[Message], system: Optional[str]) -> List[Message]:
        """messages with `system` as the first message. A system message already present is
        replaced; system=None leaves the messages alone so the template's default applies."""
        out = [dict(m) for m in messages]
        if system is None:
            return out
        if out and out[0].get("role") == "system":
            out[0]["content"] = system
            return out
        return [{"role": "system", "content": system}] + out

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        system: Optional[str] = None,
        tokenize: bool = False,
        **template_kwargs: Any,
    ) -> Union[str, List[int]]:
        """The prompt for a conversation, as text (tokenize=False) or ids, exactly as
        transformers' apply_chat_template renders the model's template."""
        text = self._render(self.with_system(messages, system), add_generation_prompt, **template_kwargs)
        return self.encode(text) if tokenize else text

    def encode_chat(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        system: Optional[str] = None,
        **template_kwargs: Any,
    ) -> List[int]:
        """Prompt ids: the rendered template encoded without adding special tokens (the template
        writes BOS itself when the model wants one), as transformers does."""
        text = self._render(self.with_system(messages, system), add_generation_prompt, **template_kwargs)
        return self.encode(text)

    @property
    def default_system_prompt(self) -> Optional[str]:
        """The system prompt the template inserts when the conversation has none (Qwen2's
        "You are a helpful assistant."), or None. Found by comparing two renderings."""
        if self._default_system is False:
            self._default_system = self._find_default_system()
        return self._default_system

    def _find_default_system(self) -> Optional[str]:
        user = {"role": "user", "content": "u"}
        try:
            without = self._render([user], True)
            with_sys = self._render([{"role": "system", "content": _PROBE}, user], True)
        except Exception:
            return None
        i = with_sys.find(_PROBE)
        if i < 0:
            return None
        head, tail = with_sys[:i], with_sys[i + len(_PROBE) :]
        if without.startswith(head) and without.endswith(tail) and len(without) > len(head) + len(tail):
            return without[len(head) : len(without) - len(tail)]
        return None

    @property
    def eos_ids(self) -> Set[int]:
        """Every id that ends an answer (see _collect_stop_ids)."""
        if self._eos_ids is None:
            self._eos_ids = self._collect_stop_ids()
        return set(self._eos_ids)

    @property
    def stop_strings(self) -> List[str]:
        """The text of the stop tokens, for output decoded with specials kept."""
        by_id = {i: t for t, i in self.special_tokens.items()}
        return sorted(by_id[i] for i in self.eos_ids if i in by_id)

    @property
    def generation_defaults(self) -> Dict[str, Any]:
        """Sampling settings from generation_config.json (temperature, top_p, ...), if any."""
        return generation_defaults(self.path)

    def _collect_stop_ids(self) -> Set[int]:
        """Union of: eos ids of generation_config.json / config.json, the tokenizer's eos token,
        the token the chat template closes an assistant turn with, and the known end tokens
        (<|im_end|>, <|eot_id|>, ...) that this tokenizer defines as special tokens."""
        ids = set(config_eos_ids(self.path))
        if self.eos_token:
            eos = self.token_to_id(self.eos_token)
            if eos is not None:
                ids.add(eos)
        turn_end = self._template_turn_end()
        if turn_end is not None:
            ids.add(turn_end)
        special = self.special_tokens
        ids.update(special[t] for t in KNOWN_END_TOKENS if t in special)
        return ids

    def _template_turn_end(self) -> Optional[int]:
        """The special token the template writes right after an assistant message's text."""
        try:
            text = self._render([{"role": "user", "content": "u"}, {"role": "assistant", "content": _PROBE}], False)
        except Exception:
            return None
        i = text.find(_PROBE)
        if i < 0:
            return None
        after = self.encode(text[i + len(_PROBE) :])
        if after and after[0] in set(self.special_tokens.values()):
            return after[0]
        return None

    def __repr__(self) -> str:
        return "<{} {} from {}>".format(type(self).__name__, self.kind, self.path)
