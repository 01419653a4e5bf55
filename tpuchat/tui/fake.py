"""A scripted stand-in for ChatModel, for UI tests, the UI benchmark and demos.

Same surface as tpuchat.chat.session.ChatModel as far as ChatSession and the
UI use it: name, desc, model_path, fit(conv, settings), stream_ids(ids,
settings), cancel(), close().  It streams a chosen text at a chosen rate and
can be told to fail (crash after N tokens, refuse long prompts).
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


class FakeModel:
    """Streams `answer` (or answers[i] for the i-th request) at `rate` tokens/s.

    crash_after: raise EngineCrashed after that many tokens (once).
    max_prompt_chars: fit() raises PromptTooLong when the last user message is longer.
    prefill_s: delay before the first token."""

    def __init__(self, answer: str = DEFAULT_ANSWER, rate: float = 50.0, name: Optional[str] = None,
                 desc: Optional[ModelDesc] = None, answers: Optional[List[str]] = None, crash_after: Optional[int] = None,
                 max_prompt_chars: int = 2000, prefill_s: float = 0.05, devids: Sequence[int] = (0,),
                 vision: bool = False):
        self.desc = desc or fake_desc(name or ("fake-llama3.2-vision_bf16.bmodel" if vision
                                               else "fake-qwen2-7b_w4bf16_seq512.bmodel"), devids=devids, vision=vision)
        self.model_path = self.desc.path
        self.answer = answer
        self.answers = list(answers or [])
        self.rate = rate
        self.crash_after = crash_after
        self.max_prompt_chars = max_prompt_chars
        self.prefill_s = prefill_s
        self.requests: List[List[int]] = []
        self.settings_seen: List[GenSettings] = []
        self.images_seen: List[tuple] = []  # per request: (image digest or None, image_pos or None)
        self._cancel = threading.Event()
        self.closed = False

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
    IMAGE_ID = 128256

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

    def stream_ids(self, ids: Sequence[int], settings: GenSettings, image=None, image_pos=None) -> Iterator:
        self._cancel.clear()
        self.requests.append(list(ids))
        self.images_seen.append((image.digest if image is not None else None, image_pos))
        self.settings_seen.append(settings)
        text = self.answers.pop(0) if self.answers else self.answer
        pieces = split_tokens(text)[: settings.max_new_tokens]
        t0 = time.perf_counter()
        if self.prefill_s:
            time.sleep(self.prefill_s)
        produced: List[str] = []
        reason = "eos" if len(pieces) == len(split_tokens(text)) else "max_tokens"
        first = None
        for i, p in enumerate(pieces):
            if self._cancel.is_set():
                reason = "cancelled"
                break
            if self.crash_after is not None and i >= self.crash_after:
                self.crash_after = None
                raise EngineCrashed("the engine process was killed by SIGSEGV (crashed); log: /tmp/engine.log")
            if i and self.rate:
                # Absolute schedule, so the rate holds even when a consumer is slow.
                target = first + i / self.rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if first is None:
                first = time.perf_counter()
            produced.append(p)
            yield Delta(p, [i])
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
        )
        yield Finished("".join(produced), list(range(n)), stats)

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        self.closed = True
