"""A model ready to chat (engine client + tokenizer), and a conversation on it.

Front ends (plain chat, TUI, HTTP server) use these instead of the engine
client directly: they turn messages into prompt ids with the model's
template, fit the context, stream text deltas, and keep the conversation
whole whatever happens (a refused message is not added, a stopped or failed
answer keeps what was produced, marked stopped).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

from ..errors import EngineCrashed, ImageError
from ..runtime.client import DoneEvent, EngineClient
from ..runtime.protocol import GenerationStats, ModelDesc, samples
from .conversation import Attachment, Conversation, FittedPrompt, Message


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
    ignore_eos: bool = False  # run on through end-of-turn tokens (`tpuchat run --ignore-eos`, benchmarks)
    lookup: bool = True  # prompt-lookup decoding where the bmodel can (block_kv nets, greedy); same tokens

    def sampling(self) -> Optional[dict]:
        """The engine's sampling arguments; None means greedy."""
        if not samples(self.sample, self.temperature):
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
    stats: GenerationStats  # stop_reason: eos|max_tokens|context_full|cancelled

    @property
    def reason(self) -> str:
        return self.stats.stop_reason or ""


Event = Union[Delta, Notice, Finished]


def system_prefix_ids(tok, system: str) -> List[int]:
    """The prompt ids every conversation with this system prompt starts with,
    whatever the user writes: the common head of two renderings that differ
    only in the user's text (template-agnostic)."""
    a = tok.encode_chat([{"role": "user", "content": "a"}], system=system)
    b = tok.encode_chat([{"role": "user", "content": "b"}], system=system)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


class ChatModel:
    """An open bmodel with its tokenizer, in an engine worker."""

    def __init__(self, model: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None,
                 tokenizer_dir: Optional[str] = None, client: Optional[EngineClient] = None):
        from ..runtime.bmodel_file import check_bmodel_file
        from ..text import find_tokenizer_dir, load_tokenizer

        check_bmodel_file(model)  # a bad model path is the more basic error than a tokenizer
        self.tok = load_tokenizer(find_tokenizer_dir(tokenizer_dir, model))
        self.client = client or EngineClient()
        try:
            self.desc: ModelDesc = self.client.open(model, list(devids), lib_dir)
        except BaseException:
            if client is None:
                self.client.close()  # no worker left behind by a model that did not open
            raise
        self.model_path = model
        self.pinned: dict = {}  # the shared prefix kept on the device (pin_system_prefix)

    @property
    def name(self) -> str:
        return self.model_path.rsplit("/", 1)[-1]

    def answer_room(self, settings: GenSettings) -> int:
        """KV positions kept free for the answer when fitting the prompt."""
        return min(settings.max_new_tokens, max(1, self.desc.kv_len // 4))

    def fit(self, conv: Conversation, settings: GenSettings):
        # Prompts longer than one prefill are appended after it, so only the
        # KV length bounds them.
        return conv.fit(self.tok, self.desc.kv_len, self.desc.kv_len, self.answer_room(settings))

    def stream_ids(self, ids: Sequence[int], settings: GenSettings, image=None,
                   image_pos: Optional[int] = None) -> Iterator[Event]:
        """Stream an answer to already-built prompt ids (with `image`, an
        ImageInputs whose token is at ids[image_pos])."""
        from ..text.stream import IncrementalDecoder

        dec = IncrementalDecoder(self.tok)
        generated: List[int] = []
        kw = {} if image is None else {"image": image, "image_pos": image_pos}
        stops = [] if settings.ignore_eos else sorted(self.tok.eos_ids)
        for ev in self.client.generate(ids, settings.max_new_tokens, stops, settings.sampling(), lookup=settings.lookup,
                                       **kw):
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

    def pin_system_prefix(self, system: Optional[str]) -> dict:
        """Compute the shared system prompt's KV rows once and keep them on
        the device for every conversation that starts with it (None drops
        them).  Returns tokens, seconds, reused_tokens."""
        ids = system_prefix_ids(self.tok, system) if system else []
        self.pinned = self.client.pin_prefix(ids)
        return self.pinned

    def cancel(self) -> None:
        self.client.cancel()

    def close(self) -> None:
        self.client.close()

    # -- images (vision bmodels) -------------------------------------------
    @classmethod
    def from_parts(cls, tok, client, desc: ModelDesc, model_path: str = "model.bmodel") -> "ChatModel":
        """A ChatModel over an already open client (tests, embedding)."""
        self = cls.__new__(cls)
        self.tok, self.client, self.desc, self.model_path = tok, client, desc, model_path
        return self

    @property
    def has_vision(self) -> bool:
        return self.desc.has_vision

    def check_vision(self) -> None:
        """ImageError unless this bmodel can take images."""
        check_vision(self.desc, self.name)

    @property
    def image_token_id(self) -> Optional[int]:
        if not hasattr(self, "_image_token_id"):
            from ..vision.prompt import image_token_id

            self._image_token_id = image_token_id(self.tok)
        return self._image_token_id

    def fit_prompt(self, conv: Conversation, settings: GenSettings) -> FittedPrompt:
        return conv.fit_prompt(self.tok, self.desc.kv_len, self.desc.kv_len, self.answer_room(settings),
                               images=self.has_vision)

    def image_inputs(self, att: Attachment):
        """The ImageInputs of an attached image (preprocessed once per image)."""
        cache: Dict[str, object] = self.__dict__.setdefault("_image_cache", {})
        if att.digest in cache:
            return cache[att.digest]
        from ..vision import load_processor, preprocess

        img = reload_attachment(att)
        inputs = preprocess(img, load_processor(self.tok.path), self.desc.vision_tiles or None)
        size = self.desc.image_size
        if size and inputs.size != size:
            raise ImageError(f"the image processor makes {inputs.size} px tiles but the model takes {size} px: "
                             "preprocessor_config.json does not belong to this bmodel")
        cache.clear()  # the model holds one image: keep only the latest
        cache[att.digest] = inputs
        return inputs


@dataclass
class ModelSpec:
    """Which model to open, and how: what every front end is given."""

    path: str
    devids: Sequence[int] = (0,)
    lib_dir: Optional[str] = None
    tokenizer_dir: Optional[str] = None
    shared_prefix: Optional[str] = None  # a system prompt whose KV rows stay on the device (--prefix-file)


def open_chat_model(spec: ModelSpec, client: Optional[EngineClient] = None) -> ChatModel:
    """Open the model, pin the shared prefix, and close it all again if any step fails:
    the one way every front end (TUI, plain chat, run, bench, serve) gets a model."""
    model = ChatModel(spec.path, list(spec.devids), spec.lib_dir, spec.tokenizer_dir, client)
    if spec.shared_prefix:
        try:
            model.pin_system_prefix(spec.shared_prefix)
        except BaseException:
            model.close()
            raise
    return model


def check_vision(desc: ModelDesc, name: str) -> None:
    if not desc.has_vision:
        raise ImageError(f"{name} is a text-only model (no vision net): it cannot take images; "
                         "open a vision bmodel (Llama-3.2-Vision) to ask about images")


def attach_image(path: Union[str, Path]) -> Attachment:
    """Read and check an image file for a message (ImageError with one line)."""
    from ..vision import load_image

    return Attachment.from_loaded(load_image(path))


def reload_attachment(att: Attachment):
    """The decoded image of an attachment: in memory, or read again from its file
    (ImageError if it is gone or no longer the same image)."""
    if att.loaded is not None:
        return att.loaded
    if not att.path:
        raise ImageError(f"the image {att.name or ''} is no longer available")
    from ..vision import load_image

    p = Path(att.path)
    if not p.exists():
        raise ImageError(f"the image file {p} is gone")
    img = load_image(p)
    if img.digest != att.digest:
        raise ImageError(f"the image file {p} changed since it was attached")
    att.loaded = img
    return img


class ChatSession:
    """A conversation held against a ChatModel."""

    def __init__(self, model: ChatModel, conversation: Optional[Conversation] = None,
                 settings: Optional[GenSettings] = None):
        self.model = model
        self.conv = conversation or Conversation()
        self.settings = settings or GenSettings()

    def send(self, text: str, image: Union[None, str, Path, Attachment] = None) -> Iterator[Event]:
        """Add the user's message (with an image: a path or an Attachment) and
        stream the answer.

        PromptTooLong, ImageError: the message is not added (the caller still has it).
        EngineCrashed: the message stays, with the partial answer marked
        stopped; the next send restarts the engine."""
        att = None
        if image is not None:
            check_vision(self.model.desc, self.model.name)
            att = image if isinstance(image, Attachment) else attach_image(image)
        self.conv.add("user", text, attachment=att)
        try:
            ids, dropped, image_args, notices = self._prepare()
        except Exception:
            self.conv.messages.pop()
            raise
        for note in notices:
            yield Notice(note)
        if dropped:
            yield Notice(f"left out the {dropped} oldest turn{'s' if dropped > 1 else ''} to fit the context")
        yield from self._answer(ids, **image_args)

    def _prepare(self):
        """Prompt ids, old turns left out, the engine's image arguments, notices."""
        if not self.conv.has_images():
            ids, dropped = self.model.fit(self.conv, self.settings)
            return ids, dropped, {}, []
        notices: List[str] = []
        if not self.model.desc.has_vision:
            notices.append("this model cannot see images: the images in this conversation are left out")
        while True:
            p = self.model.fit_prompt(self.conv, self.settings)
            m = p.image_message
            if m is None:
                return p.ids, p.dropped, {}, notices
            try:
                inputs = self.model.image_inputs(m.attachment)
            except ImageError as e:
                if m is self.conv.messages[-1]:
                    raise
                # An older image that cannot be read any more: go on without it.
                m.attachment.gone = True
                notices.append(f"an earlier image is left out: {e}")
                continue
            from ..vision.prompt import find_image_pos

            pos = find_image_pos(p.ids, self.model.image_token_id)
            return p.ids, p.dropped, {"image": inputs, "image_pos": pos}, notices

    def _answer(self, ids, **image_args) -> Iterator[Event]:
        reply: Message = self.conv.add("assistant", "", stopped=True)
        parts: List[str] = []
        try:
            for ev in self.model.stream_ids(ids, self.settings, **image_args):
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
