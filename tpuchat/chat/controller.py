"""A conversation as a front end holds it, with no UI code: what is stored
when (and taken back on refuse, retry and edit), export, the buffer between
the generating thread and the screen, and the live figures.

The chat UI and the plain chat drive one ConversationController each; the UI
renders what it says.  Without a store (the plain chat) nothing is saved.

Store rules: the user's message is saved before the answer starts, the
answer's row is created at once (empty, marked stopped) and filled in as text
arrives (every SAVE_EVERY_S) and when it ends, so a stopped, failed or killed
answer keeps what was produced.  A message the model refuses (too long, an
image it cannot take) is deleted again, with its answer row.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from .. import config as cfg
from ..errors import ImageError, PromptTooLong
from ..runtime.protocol import GenerationStats
from .conversation import Attachment, Conversation, Message
from .session import ChatSession, Delta, Event, Finished, GenSettings

SAVE_EVERY_S = 2.0


class TokenBuffer:
    """Text produced by the generating thread, waiting for the screen; and the
    live figures (FTL, tokens/s so far) measured as it arrives."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: List[Tuple[float, str, int]] = []
        self.t_send = 0.0
        self.t_first: Optional[float] = None
        self.tokens = 0
        self.latencies: List[float] = []  # token arrival -> taken for the screen, seconds (UI benchmark)

    def start(self) -> None:
        with self._lock:
            self._pending = []
        self.t_send = self.clock()
        self.t_first = None
        self.tokens = 0

    def push(self, text: str, n_tokens: int) -> None:
        now = self.clock()
        n = max(1, n_tokens)
        with self._lock:
            if self.t_first is None:
                self.t_first = now
            self.tokens += n
            self._pending.append((now, text, n))

    def take(self) -> str:
        """Everything pushed since the last take (records each token's wait)."""
        with self._lock:
            chunks, self._pending = self._pending, []
        if chunks:
            now = self.clock()
            self.latencies.extend(now - t for t, _, n in chunks for _ in range(n))
        return "".join(c for _, c, _ in chunks)

    def live_stats(self) -> GenerationStats:
        if self.t_first is None:
            return GenerationStats.partial()
        now = self.clock()
        n = self.tokens
        tps = (n - 1) / (now - self.t_first) if n > 1 and now > self.t_first else 0.0
        return GenerationStats.partial(ftl_s=self.t_first - self.t_send, tokens_per_s=tps, new_tokens=n)


class _Session(ChatSession):
    """ChatSession that remembers the prompt length of the current answer (for the context gauge)."""

    last_prompt_tokens = 0

    def _answer(self, ids, **image_args):
        self.last_prompt_tokens = len(ids)
        return super()._answer(ids, **image_args)


@dataclasses.dataclass
class Answered:
    """How an answer ended, for the front end to show."""

    text: str
    stats: GenerationStats
    stopped: bool
    error: Optional[str] = None  # the answer failed (what was produced is kept)


class ConversationController:
    def __init__(self, store=None, defaults: Optional[cfg.Settings] = None, model=None):
        self.store = store
        self.defaults = defaults if defaults is not None else cfg.Settings()
        self.session = _Session(model, Conversation(system=self.defaults.system_prompt or None))
        self.conv_id: Optional[int] = None
        self.conv_settings: Dict[str, object] = {}
        self.buffer = TokenBuffer()
        self.last_stats = GenerationStats.partial()
        self.ctx_used = 0  # KV positions the last answer left in use
        self.generating = False
        self._rows: Tuple[Optional[int], Optional[int]] = (None, None)  # (user, answer) rows of the running answer
        self._last_save = 0.0
        self.result: Optional[Answered] = None  # how the last answer ended

    # -- state ----------------------------------------------------------------------------------
    @property
    def conv(self) -> Conversation:
        return self.session.conv

    @property
    def model(self):
        return self.session.model

    def set_model(self, model) -> None:
        self.session.model = model
        if self.conv_id is not None and self.store is not None:
            self.store.update_conversation(self.conv_id, model=model.name)

    def effective_settings(self) -> cfg.Settings:
        """The defaults with this conversation's own settings on top."""
        s = dataclasses.replace(self.defaults)
        for k, v in self.conv_settings.items():
            if k in cfg.GEN_KEYS:
                try:
                    setattr(s, k, cfg.coerce(k, v))
                except ValueError:
                    pass
        s.system_prompt = self.conv.system or ""
        return s

    def gen_settings(self) -> GenSettings:
        s = self.effective_settings()
        return GenSettings(max_new_tokens=s.max_new_tokens, sample=s.sample, temperature=s.temperature,
                           top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                           seed=None if s.seed < 0 else s.seed)

    def live_stats(self) -> GenerationStats:
        return self.buffer.live_stats()

    def shown_stats(self) -> GenerationStats:
        """The figures to show now: live while answering, else the last answer's."""
        return self.live_stats() if self.generating else self.last_stats

    def context_used(self) -> int:
        if self.generating:
            return self.session.last_prompt_tokens + self.buffer.tokens
        return self.ctx_used

    def last_answer(self) -> Optional[str]:
        return next((m.content for m in reversed(self.conv.messages) if m.role == "assistant"), None)

    # -- conversations --------------------------------------------------------------------------
    def new_conversation(self) -> None:
        self.conv_id = None
        self.conv_settings = {}
        self.session.conv = Conversation(system=self.defaults.system_prompt or None)
        self.ctx_used = 0
        self.last_stats = GenerationStats.partial()

    def open_conversation(self, conv_id: int) -> Optional[list]:
        """Load a stored conversation; returns [(stored message, Message)], None if it is gone."""
        c = self.store.get_conversation(conv_id)
        if c is None:
            return None
        stored = self.store.messages(conv_id)
        self.conv_id = conv_id
        self.conv_settings = dict(c.settings)
        self.session.conv = Conversation(system=c.system, messages=[
            Message(m.role, m.content, m.stopped, stored_attachment(m)) for m in stored])
        self.last_stats = GenerationStats.partial()
        self.ctx_used = 0
        for m in stored:
            if m.role != "user" and m.stats.prompt_tokens is not None:
                self.ctx_used = m.stats.prompt_tokens + (m.stats.new_tokens or 0)
        return list(zip(stored, self.conv.messages))

    def _ensure_conversation(self, first_text: str) -> Optional[int]:
        if self.conv_id is None and self.store is not None:
            title = " ".join(first_text.split())[:48] or "(untitled)"
            model = self.model.name if self.model is not None else None
            self.conv_id = self.store.new_conversation(title, self.conv.system, model, self.conv_settings).id
        return self.conv_id

    def clear(self) -> None:
        self.conv.clear()
        if self.conv_id is not None and self.store is not None:
            self.store.clear_messages(self.conv_id)
        self.ctx_used = 0

    def set_system(self, text: Optional[str]) -> None:
        self.conv.system = text or None
        if self.conv_id is not None and self.store is not None:
            self.store.update_conversation(self.conv_id, system=self.conv.system)

    def rename(self, conv_id: int, title: str) -> None:
        self.store.rename(conv_id, title)

    # -- settings -------------------------------------------------------------------------------
    def apply_settings(self, s: cfg.Settings, scope: str, config_file=None) -> str:
        """Use `s` for this conversation ("conversation") or also save it as the default
        ("default", to config_file).  Returns what to tell the user; OSError if saving fails."""
        self.conv.system = s.system_prompt or None
        self.conv_settings = s.gen_dict()
        if self.conv_id is not None and self.store is not None:
            self.store.update_conversation(self.conv_id, system=self.conv.system, settings=self.conv_settings)
        if scope != "default":
            return "Settings applied to this conversation"
        for k in cfg.GEN_KEYS:
            setattr(self.defaults, k, getattr(s, k))
        self.defaults.system_prompt = s.system_prompt
        return f"Saved as default in {cfg.save(self.defaults, config_file)}"

    def parse_set(self, arg: str) -> cfg.Settings:
        """`/set KEY=VALUE …` applied to the effective settings; ValueError with one line."""
        s = self.effective_settings()
        for item in arg.replace(",", " ").split():
            k, eq, v = item.partition("=")
            k = k.strip().replace("-", "_")
            if k == "greedy":
                k, v, eq = "sample", "off", "="
            if not eq or k not in cfg.GEN_KEYS:
                raise ValueError(f"use KEY=VALUE with KEY one of {', '.join(cfg.GEN_KEYS)}")
            setattr(s, k, cfg.coerce(k, v))
        problem = cfg.validate(s)
        if problem:
            raise ValueError(problem)
        return s

    # -- answering ------------------------------------------------------------------------------
    def begin(self, text: str, image: Optional[Attachment] = None, retry: bool = False) -> None:
        """Save the user's message (not on a retry: it is there) and an empty answer row, and
        get ready to stream.  Call from the thread that owns the screen, before answer()."""
        conv_id = self._ensure_conversation(text)
        user_row = answer_row = None
        if conv_id is not None:
            if not retry:
                user_row = self.store.add_message(conv_id, "user", text)
                if image is not None:
                    self.store.add_attachment(user_row, image.path, image.digest, image.name)
            model = self.model.name if self.model is not None else None
            answer_row = self.store.add_message(conv_id, "assistant", "", stopped=True, model=model)
        self._rows = (user_row, answer_row)
        self.buffer.start()
        self._last_save = time.monotonic()
        self.generating = True
        self.session.settings = self.gen_settings()

    def answer(self, text: str, image: Optional[Attachment] = None) -> Iterator[Event]:
        """Stream the answer to `text` (after begin()); text goes to the buffer as it comes.
        PromptTooLong / ImageError: both rows are deleted again, the message is not in the
        conversation.  Any other error: what was produced is stored with the error, then the
        error is raised.  Finished: stored with its stats."""
        user_row, row = self._rows
        try:
            for ev in self.session.send(text, image=image):
                if isinstance(ev, Delta):
                    self.buffer.push(ev.text, len(ev.token_ids))
                    self._save_progress(row)
                elif isinstance(ev, Finished):
                    self._finished(ev, row)
                yield ev
        except (PromptTooLong, ImageError):
            self.generating = False
            for r in (row, user_row):
                if r is not None:
                    self.store.delete_message(r)
            raise
        except GeneratorExit:  # the consumer stopped reading: the conversation keeps what it had
            raise
        except BaseException as e:
            if self.generating:
                self.failed(error_text(e), row)
            raise
        finally:
            self.generating = False

    def _save_progress(self, row: Optional[int]) -> None:
        if row is not None and time.monotonic() - self._last_save > SAVE_EVERY_S:
            self._last_save = time.monotonic()
            self.store.update_message(row, content=self.conv.messages[-1].content)

    def _finished(self, ev: Finished, row: Optional[int]) -> None:
        msgs = self.conv.messages
        stopped = msgs[-1].stopped if msgs and msgs[-1].role == "assistant" else True
        self.last_stats = ev.stats
        self.ctx_used = ev.stats.prompt_tokens + ev.stats.new_tokens
        self.generating = False
        self.result = Answered(ev.text, ev.stats, stopped)
        if row is not None:
            self.store.update_message(row, content=ev.text, stopped=stopped, stats=ev.stats)

    def failed(self, error: str, row: Optional[int] = None) -> Answered:
        """The answer broke off: keep what was produced, with the error."""
        msgs = self.conv.messages
        text = msgs[-1].content if msgs and msgs[-1].role == "assistant" else ""
        stats = self.live_stats()
        stats.stop_reason = "failed"
        self.generating = False
        self.result = Answered(text, stats, True, error or "failed")
        row = row if row is not None else self._rows[1]
        if row is not None:
            self.store.update_message(row, content=text, stopped=True, stats=stats, error=error or "failed")
        return self.result

    def cancel(self) -> None:
        self.session.cancel()

    # -- taking messages back -------------------------------------------------------------------
    def take_back_answer(self) -> Optional[Tuple[str, Optional[Attachment]]]:
        """For a retry: drop the last answer (and the user's message from the conversation,
        not from the store: the retry answers it again).  None if there is nothing to retry."""
        msgs = self.conv.messages
        if len(msgs) < 2 or msgs[-1].role != "assistant" or msgs[-2].role != "user":
            return None
        text, image = msgs[-2].content, msgs[-2].attachment
        del msgs[-2:]
        if self.conv_id is not None and self.store is not None:
            stored = self.store.messages(self.conv_id)
            if stored and stored[-1].role == "assistant":
                self.store.delete_message(stored[-1].id)
        return text, image

    def take_back_last_message(self) -> Optional[Tuple[str, Optional[Attachment], int]]:
        """For an edit: drop the last user message and what followed it, from the conversation and
        the store.  Returns its text, image and how many messages went."""
        msgs = self.conv.messages
        idx = max((i for i, m in enumerate(msgs) if m.role == "user"), default=None)
        if idx is None:
            return None
        text, image = msgs[idx].content, msgs[idx].attachment
        n_drop = len(msgs) - idx
        del msgs[idx:]
        if self.conv_id is not None and self.store is not None:
            for m in self.store.messages(self.conv_id)[-n_drop:]:
                self.store.delete_message(m.id)
        return text, image, n_drop

    # -- export ---------------------------------------------------------------------------------
    def export(self, arg: str, cwd: Optional[str] = None) -> List[str]:
        """`/export [md|json] [PATH]`: write the conversation; the files written (OSError)."""
        parts = arg.split(maxsplit=1)
        fmts, target = ["md", "json"], None
        if parts and parts[0].lower() in ("md", "markdown", "json"):
            fmts = ["json" if parts[0].lower() == "json" else "md"]
            target = parts[1] if len(parts) > 1 else None
        elif parts:
            target = arg
            if target.endswith(".json") or target.endswith(".md"):
                fmts = [target.rsplit(".", 1)[1]]
        c = self.store.get_conversation(self.conv_id)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", c.title if c else "").strip("-").lower()[:40] or "chat"
        written = []
        for f in fmts:
            if target and len(fmts) == 1:
                path = Path(os.path.expanduser(target))
            else:
                base = Path(os.path.expanduser(target)) if target else Path(cwd or os.getcwd())
                path = base / f"tpuchat-{self.conv_id}-{slug}.{f}"
            data = self.store.export_json(self.conv_id) if f == "json" else self.store.export_markdown(self.conv_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data, encoding="utf-8")
            written.append(str(path))
        return written


def error_text(e: BaseException) -> str:
    """One line for a failed answer: a TpuchatError says it all, anything else also says its type."""
    from ..errors import TpuchatError

    return str(e) if isinstance(e, TpuchatError) else f"{type(e).__name__}: {e}"


def stored_attachment(m) -> Optional[Attachment]:
    """The image of a stored message, as the conversation holds it (read again when needed)."""
    for a in getattr(m, "attachments", None) or []:
        if a.kind == "image":
            return Attachment(a.path, a.digest, a.name or (Path(a.path).name if a.path else "image"))
    return None
