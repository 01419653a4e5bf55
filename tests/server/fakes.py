"""A scripted stand-in for ChatModel: same surface the server uses (desc, name, model_path, tok,
stream_ids, cancel), no device.  Like the engine worker, a cancel that arrives while nothing is
generating is a no-op, and a running generation stops at the next token."""

import threading
import time
from typing import List, Optional

from tpuchat.chat.session import Delta, Finished
from tpuchat.runtime.protocol import GenerationStats
from tpuchat.tui.fake import fake_desc


IMAGE_ID = 0x110000  # beyond every character: the image token


class FakeTok:
    """One token per character; the 'template' is <role>content per message, then <assistant>.
    Content parts (images) render as their parts in order, an image as IMAGE_ID."""

    eos_ids = {0}

    def encode_chat(self, messages, system=None):
        if system is not None:
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
        ids = []
        for m in messages:
            ids += [ord(c) for c in "<%s>" % m["role"]]
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            for p in parts:
                ids += [IMAGE_ID] if p["type"] == "image" else [ord(c) for c in p["text"]]
        return ids + [ord(c) for c in "<assistant>"]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class FakeModel:
    def __init__(self, pieces: Optional[List[str]] = None, token_s: float = 0.01, prefill_s: float = 0.0,
                 seq_len: int = 200, kv_len: int = 256, can_sample: bool = False, eos_after: Optional[int] = None,
                 fail: Optional[BaseException] = None, vision: bool = False):
        self.pieces = pieces or ["Hello", ",", " wor", "ld", "!", " How", " are", " you", "?"]
        self.token_s = token_s
        self.prefill_s = prefill_s
        self.eos_after = eos_after  # end with 'eos' after this many tokens
        self.fail = fail  # raise this (once) instead of answering
        self.desc = fake_desc("fake-model.bmodel", seq_len, kv_len, vision=vision, can_sample=can_sample)
        self.image_token_id = IMAGE_ID
        self.model_path = "/models/fake-model.bmodel"
        self.name = "fake-model.bmodel"
        self.tok = FakeTok()
        self.calls = []  # one dict per generation: ids, settings, started, ended, stop_reason, tokens
        self.cancels = 0
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    def image_inputs(self, att):
        from tpuchat.runtime.image_inputs import ImageInputs

        img = att.loaded
        return ImageInputs(pixel_values=b"", tiles=4, size=112, aspect_ratio_id=1, aspect_ratio_mask=(1, 0, 0, 0),
                           digest=img.digest)

    def stream_ids(self, ids, settings, image=None, image_pos=None):
        self._cancel.clear()  # a cancel before this generation started does not apply to it
        rec = {"ids": list(ids), "settings": settings, "started": time.monotonic(), "ended": None,
               "stop_reason": None, "tokens": 0, "image": image, "image_pos": image_pos}
        self.calls.append(rec)
        if self.fail is not None:
            err, self.fail = self.fail, None
            raise err
        time.sleep(self.prefill_s)
        out = []
        reason = "max_tokens"
        t0 = time.monotonic()
        for i in range(settings.max_new_tokens):
            if self.eos_after is not None and i >= self.eos_after:
                reason = "eos"
                break
            if i and self._cancel.wait(self.token_s):
                reason = "cancelled"
                break
            if self._cancel.is_set():
                reason = "cancelled"
                break
            piece = self.pieces[i % len(self.pieces)]
            out.append(piece)
            rec["tokens"] += 1
            yield Delta(piece, [i])
        rec["ended"], rec["stop_reason"] = time.monotonic(), reason
        dt = time.monotonic() - t0
        stats = GenerationStats(prompt_tokens=len(ids), new_tokens=len(out), ftl_s=self.prefill_s,
                                tokens_per_s=(len(out) / dt) if dt > 0 else 0.0, device_ms_per_token=1.0,
                                host_us_per_token=2.0, stop_reason=reason)
        yield Finished("".join(out), list(range(len(out))), stats)

    def cancel(self):
        with self._lock:
            self.cancels += 1
            self._cancel.set()
