"""The scripted stand-in for ChatModel, for the UI, controller and server
tests, the UI benchmark and demos (one for all of them).

Same surface as tpuchat.chat.session.ChatModel as far as the front ends use
it: name, desc (a real ModelDesc), model_path, tok, fit(conv, settings),
fit_prompt, image_inputs, stream_ids(ids, settings), cancel(), close().
"""

import threading
import time
from typing import Iterator, List, Optional, Sequence

from ..chat.session import Delta, Finished, GenSettings
from ..errors import EngineCrashed, PromptTooLong
from ..runtime.protocol import DeviceStat, GenerationStats, ModelDesc, RuntimeInfo

DEFAULT_ANSWER = (
    "Here is a **bubble sort** in Python:\n\n"
    "```python\n"
    "def bubble_sort(xs):\n"
    "    xs = list(xs)\n"
    "    for i in range(len(xs)):\n"
    "        for j in range(len(xs) - 1 - i):\n"
    "            if xs[j] > xs[j + 1]:\n"
    "                xs[j], xs[j + 1] = xs[j + 1], xs[j]\n"
    "    return xs\n"
    "```\n\n"
    "It swaps neighbours until the list is sorted: O(n²) comparisons, fine for small lists."
)


def split_tokens(text: str) -> List[str]:
    """Word-ish pieces (each keeps its leading space) so the stream looks like a tokenizer's."""
    out: List[str] = []
    cur = ""
    for ch in text:
        if ch in " \n" and cur.strip():
            out.append(cur)
            cur = ""
        cur += ch
    if cur:
        out.append(cur)
    return out


def fake_desc(name: str = "fake-qwen2-7b_w4bf16_seq512.bmodel", seq_len: int = 512, kv_len: int = 512,
              num_device: int = 1, devids: Sequence[int] = (0,), vision: bool = False,
              can_sample: bool = False) -> ModelDesc:
    """The description a Qwen2-7B w4bf16 build would have (a top-1 build unless can_sample)."""
    return ModelDesc(
        path="/models/" + name, file_size=4_300_000_000, chip="BM1684X", toolchain="1.30.2",
        num_layers=28, seq_len=seq_len, kv_len=kv_len, hidden_size=3584, kv_heads=4,
        head_dim=128, dtype="bf16", quantization="w4bf16", addr_mode=1, dynamic=False,
        prefill_has_mask=True, stages=[1], num_device=num_device,
        lm_head="logits" if can_sample else "top1", vocab_size=152064, heads=[],
        block_kv=False, kv_cache_bytes=58_720_256, nets=[],
        devices=[DeviceStat(d, 12288, 5230, 0) for d in devids],
        has_vision=vision, vision_tiles=4 if vision else 0, image_size=112 if vision else 0,
        image_patches=65 if vision else 0, runtime=RuntimeInfo("", "fake", ""),
    )


class FakeTok:
    """One token per character; the 'template' is <role>content per message, then <assistant>.
    Content parts render in order, an image as FakeModel.IMAGE_ID.  For front ends that encode
    prompts themselves (the server)."""

    eos_ids = {0}

    def encode_chat(self, messages, system=None):
        if system is not None:
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
        ids: List[int] = []
        for m in messages:
            ids += [ord(c) for c in "<%s>" % m["role"]]
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            for p in parts:
                ids += [FakeModel.IMAGE_ID] if p["type"] == "image" else [ord(c) for c in p["text"]]
        return ids + [ord(c) for c in "<assistant>"]

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class FakeModel:
    """The one scripted model of the tests, the UI benchmark and demos: a ChatModel's surface
    over a real ModelDesc (fake_desc), no device.

    It streams `answer` (or answers[i] for the i-th request) in word pieces at `rate` tokens/s,
    ending with eos when the text is out; or, given `pieces`, those pieces over and over until
    max_new_tokens (or eos after `eos_after` tokens), one every `token_s` seconds.
    crash_after: raise EngineCrashed after that many tokens (once); fail: raise this (once)
    instead of answering.  max_prompt_chars: fit() raises PromptTooLong when the last user
    message is longer.  prefill_s: delay before the first token.  A cancel stops a running
    answer at the next token; one that arrives while nothing runs does not apply to the next.
    Every request is recorded in `calls` (ids, settings, image, timing, stop reason).
    For the server's engine pool: `gate` (an Event) holds each answer before its first token
    until set; restart() counts restarts, takes restart_s, and fails restart_fails times;
    the stats say how many prompt tokens were "reused" (shared with the previous prompt, as the
    engine's KV reuse would keep them).  Token ids are FakeTok's: one per character."""

    IMAGE_ID = 128256

    def __init__(self, answer: str = DEFAULT_ANSWER, rate: float = 50.0, name: Optional[str] = None,
                 desc: Optional[ModelDesc] = None, answers: Optional[List[str]] = None, crash_after: Optional[int] = None,
                 max_prompt_chars: int = 2000, prefill_s: float = 0.05, devids: Sequence[int] = (0,),
                 vision: bool = False, pieces: Optional[List[str]] = None, token_s: Optional[float] = None,
                 eos_after: Optional[int] = None, fail: Optional[BaseException] = None, seq_len: int = 512,
                 kv_len: int = 512, can_sample: bool = False):
        name = name or ("fake-llama3.2-vision_bf16.bmodel" if vision else "fake-qwen2-7b_w4bf16_seq512.bmodel")
        self.desc = desc or fake_desc(name, seq_len, kv_len, devids=devids, vision=vision, can_sample=can_sample)
        self.model_path = self.desc.path
        self.tok = FakeTok()
        self.answer = answer
        self.answers = list(answers or [])
        self.pieces = list(pieces) if pieces else None
        self.rate = rate
        self.token_s = token_s
        self.eos_after = eos_after
        self.crash_after = crash_after
        self.fail = fail
        self.max_prompt_chars = max_prompt_chars
        self.prefill_s = prefill_s
        self.calls: List[dict] = []  # one per request: ids, settings, image, image_pos, started, ended, stop_reason, tokens
        self.cancels = 0
        self.restarts = 0
        self.gate: Optional[threading.Event] = None
        self.restart_s = 0.0
        self.restart_fails = 0
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.closed = False

    # what earlier tests read
    requests = property(lambda self: [c["ids"] for c in self.calls])
    settings_seen = property(lambda self: [c["settings"] for c in self.calls])
    images_seen = property(lambda self: [(c["image"].digest if c["image"] is not None else None, c["image_pos"])
                                         for c in self.calls])  # per request: (image digest, image_pos)

    @property
    def name(self) -> str:
        return self.model_path.rsplit("/", 1)[-1]

    def fit(self, conv, settings: GenSettings):
        last = conv.messages[-1].content if conv.messages else ""
        if len(last) > self.max_prompt_chars:
            raise PromptTooLong(f"this message needs {len(last)} prompt tokens but the model takes at most "
                                f"{self.max_prompt_chars}; shorten it")
        text = (conv.system or "") + "".join(m.content for m in conv.messages)
        n = max(1, len(text) // 4) + 4 * len(conv.messages)
        return list(range(n)), 0

    # -- images: the same surface as ChatModel; ids are made up, the image is checked and recorded
    @property
    def image_token_id(self) -> int:
        return self.IMAGE_ID

    def fit_prompt(self, conv, settings: GenSettings):
        from ..chat.conversation import FittedPrompt, template_messages

        self.fit(conv, settings)  # the same refusals
        msgs, img = template_messages(conv.messages, images=self.desc.has_vision)
        ids: List[int] = []
        for i, m in enumerate(msgs):
            if i == img:
                ids.append(self.IMAGE_ID)
            text = m["content"] if isinstance(m["content"], str) else m["content"][-1]["text"]
            ids.extend(range(1, 5 + len(text) // 4))
        return FittedPrompt(ids, 0, conv.messages[img] if img is not None else None)

    def image_inputs(self, att):
        from ..chat.session import reload_attachment
        from ..runtime.image_inputs import ImageInputs

        reload_attachment(att)  # a gone or changed file fails as it would for real
        return ImageInputs(pixel_values=b"", tiles=4, size=112, aspect_ratio_id=1, aspect_ratio_mask=(1, 0, 0, 0),
                           digest=att.digest)

    def _script(self, settings: GenSettings):
        """The pieces of this answer and the stop reason once they are all out."""
        n = settings.max_new_tokens
        if self.pieces is not None:
            if self.eos_after is not None and self.eos_after < n:
                return [self.pieces[i % len(self.pieces)] for i in range(self.eos_after)], "eos"
            return [self.pieces[i % len(self.pieces)] for i in range(n)], "max_tokens"
        pieces = split_tokens(self.answers.pop(0) if self.answers else self.answer)
        return pieces[:n], "eos" if len(pieces) <= n else "max_tokens"

    def _wait_turn(self, i: int, first: Optional[float]) -> bool:
        """Wait for the i-th token's time; True if cancelled meanwhile."""
        if self.token_s is not None:
            return self._cancel.wait(self.token_s)
        if self.rate:  # an absolute schedule, so the rate holds even when a consumer is slow
            delay = first + i / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return self._cancel.is_set()

    def stream_ids(self, ids: Sequence[int], settings: GenSettings, image=None, image_pos=None) -> Iterator:
        self._cancel.clear()  # a cancel before this answer started does not apply to it
        rec = {"ids": list(ids), "settings": settings, "image": image, "image_pos": image_pos,
               "started": time.monotonic(), "ended": None, "stop_reason": None, "tokens": 0}
        prev = self.calls[-1]["ids"] if self.calls else []
        self.calls.append(rec)
        reused = 0
        while reused < min(len(prev), len(ids) - 1) and prev[reused] == ids[reused]:
            reused += 1
        if self.fail is not None:
            err, self.fail = self.fail, None
            raise err
        pieces, reason = self._script(settings)
        if self.gate is not None:
            self.gate.wait(30)
        t0 = time.perf_counter()
        if self.prefill_s:
            time.sleep(self.prefill_s)
        produced: List[str] = []
        first = None
        for i, p in enumerate(pieces):
            if self._cancel.is_set() or (i and self._wait_turn(i, first)):
                reason = "cancelled"
                break
            if self.crash_after is not None and i >= self.crash_after:
                self.crash_after = None
                raise EngineCrashed("the engine process was killed by SIGSEGV (crashed); log: /tmp/engine.log")
            if first is None:
                first = time.perf_counter()
            produced.append(p)
            rec["tokens"] += 1
            yield Delta(p, [i])
        rec["ended"], rec["stop_reason"] = time.monotonic(), reason
        end = time.perf_counter()
        n = len(produced)
        stats = GenerationStats(
            ftl_s=(first or end) - t0,
            tokens_per_s=(n - 1) / (end - first) if first and n > 1 and end > first else 0.0,
            new_tokens=n,
            prompt_tokens=len(ids),
            device_ms_per_token=1000.0 / self.rate if self.rate else 0.0,
            host_us_per_token=50.0,
            stop_reason=reason,
            reused_tokens=reused,
        )
        text = "".join(produced)
        yield Finished(text, self.tok.encode(text), stats)

    def restart(self) -> None:
        """The server pool's restart after a crash (ChatModel: its client's ensure_open)."""
        self.restarts += 1
        time.sleep(self.restart_s)
        if self.restart_fails:
            self.restart_fails -= 1
            raise RuntimeError("device not ready")

    def cancel(self) -> None:
        with self._lock:
            self.cancels += 1
            self._cancel.set()

    def close(self) -> None:
        self.closed = True
