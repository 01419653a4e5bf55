"""A model ready to chat (engine client + tokenizer), and a conversation on it.

Front ends (plain chat, TUI, HTTP server) use these instead of the engine
client directly: they turn messages into prompt ids with the model's
template, fit the context, stream text deltas, and keep the conversation
whole whatever happens (a refused message is not added, a stopped or failed
answer keeps what was produced, marked stopped).
"""

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Union

from ..errors import EngineCrashed
from ..runtime.client import DoneEvent, EngineClient
from .conversation import Conversation, Message


@dataclass
class GenSettings:
    """How to generate one answer.  Greedy unless `sample` is set."""

    max_new_tokens: int = 512
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0  # 1.0: off
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)  # stop strings, on top of the model's end tokens

    def sampling(self) -> Optional[dict]:
        """The engine's sampling arguments; None means greedy."""
        if not self.sample or self.temperature <= 1e-5:
            return None
        return {"sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty, "seed": self.seed}


@dataclass
class Delta:
    """New answer text (whole characters only)."""

    text: str
    token_ids: List[int] = field(default_factory=list)


@dataclass
class Notice:
    """Something the user should be told (e.g. old turns left out)."""

    text: str


@dataclass
class Finished:
    text: str
    token_ids: List[int]
    stats: dict  # GenerationStats as a dict; stop_reason: eos|max_tokens|context_full|cancelled

    @property
    def reason(self) -> str:
        return self.stats.get("stop_reason", "")


Event = Union[Delta, Notice, Finished]


class ChatModel:
    """An open bmodel with its tokenizer, in an engine worker."""

    def __init__(self, model: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None,
                 tokenizer_dir: Optional[str] = None, client: Optional[EngineClient] = None):
        from ..runtime.bmodel_file import check_bmodel_file
        from ..text import find_tokenizer_dir, load_tokenizer

        check_bmodel_file(model)  # a bad model path is the more basic error than a tokenizer
        self.tok = load_tokenizer(find_tokenizer_dir(tokenizer_dir, model))
        self.client = client or EngineClient()
        self.desc = self.client.open(model, list(devids), lib_dir)
        self.model_path = model
        self.pinned: dict = {}  # the shared prefix kept on the device (pin_system_prefix)

    @property
    def name(self) -> str:
        return self.model_path.rsplit("/", 1)[-1]

    def answer_room(self, settings: GenSettings) -> int:
        """KV positions kept free for the answer when fitting the prompt."""
        return min(settings.max_new_tokens, max(1, self.desc["kv_len"] // 4))

    def fit(self, conv: Conversation, settings: GenSettings):
        # Prompts longer than one prefill are appended after it, so only the
        # KV length bounds them.
        return conv.fit(self.tok, self.desc["kv_len"], self.desc["kv_len"], self.answer_room(settings))

    def stream_ids(self, ids: Sequence[int], settings: GenSettings) -> Iterator[Event]:
        """Stream an answer to already-built prompt ids."""
        from ..text.stream import IncrementalDecoder

        dec = IncrementalDecoder(self.tok)
        generated: List[int] = []
        for ev in self.client.generate(ids, settings.max_new_tokens, sorted(self.tok.eos_ids), settings.sampling()):
            if isinstance(ev, DoneEvent):
                rest = dec.flush()
                if rest:
                    yield Delta(rest)
                yield Finished(self.tok.decode(generated), generated, ev.stats)
                return
            generated.append(ev.id)
            text = dec.push(ev.id)
            if text:
                yield Delta(text, [ev.id])

    def system_prefix_ids(self, system: str) -> List[int]:
        """The prompt ids every conversation with this system prompt starts
        with, whatever the user writes: the common head of two renderings
        that differ only in the user's text (template-agnostic)."""
        a = self.tok.encode_chat([{"role": "user", "content": "a"}], system=system)
        b = self.tok.encode_chat([{"role": "user", "content": "b"}], system=system)
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    def pin_system_prefix(self, system: Optional[str]) -> dict:
        """Compute the shared system prompt's KV rows once and keep them on
        the device for every conversation that starts with it (None drops
        them).  Returns tokens, seconds, reused_tokens."""
        ids = self.system_prefix_ids(system) if system else []
        self.pinned = self.client.pin_prefix(ids)
        return self.pinned

    def cancel(self) -> None:
        self.client.cancel()

    def close(self) -> None:
        self.client.close()


class ChatSession:
    """A conversation held against a ChatModel."""

    def __init__(self, model: ChatModel, conversation: Optional[Conversation] = None,
                 settings: Optional[GenSettings] = None):
        self.model = model
        self.conv = conversation or Conversation()
        self.settings = settings or GenSettings()

    def send(self, text: str) -> Iterator[Event]:
        """Add the user's message and stream the answer.

        PromptTooLong: the message is not added (the caller still has it).
        EngineCrashed: the message stays, with the partial answer marked
        stopped; the next send restarts the engine."""
        self.conv.add("user", text)
        try:
            ids, dropped = self.model.fit(self.conv, self.settings)
        except Exception:
            self.conv.messages.pop()
            raise
        if dropped:
            yield Notice(f"left out the {dropped} oldest turn{'s' if dropped > 1 else ''} to fit the context")
        yield from self._answer(ids)

    def _answer(self, ids) -> Iterator[Event]:
        reply: Message = self.conv.add("assistant", "", stopped=True)
        parts: List[str] = []
        try:
            for ev in self.model.stream_ids(ids, self.settings):
                if isinstance(ev, Delta):
                    parts.append(ev.text)
                    reply.content = "".join(parts)
                elif isinstance(ev, Finished):
                    reply.content = ev.text
                    reply.stopped = ev.reason in ("cancelled", "context_full")
                yield ev
        except EngineCrashed:
            reply.content = "".join(parts)
            raise
        finally:
            # An abandoned stream (the consumer stopped reading) keeps what it had.
            if reply.stopped and not reply.content:
                reply.content = "".join(parts)

    def cancel(self) -> None:
        self.model.cancel()
