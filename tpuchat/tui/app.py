"""The chat App: sidebar (saved conversations), chat view, input, status bar.

Generation runs in a thread worker that only appends text to a buffer; a
timer drains the buffer into the answer's Markdown ~15 times a second, so a
fast model never floods the screen (or an SSH link) and the decode loop never
waits on the screen.  The status bar is redrawn by the same timer.
"""

import asyncio
import dataclasses
import os
import re
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from rich.markup import escape
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, Static

from .. import config as cfg
from ..chat.conversation import Attachment, Conversation, Message
from ..chat.session import ChatSession, Delta, Finished, GenSettings, Notice
from ..errors import EngineCrashed, ImageError, PromptTooLong, TpuchatError
from ..store import Store
from .screens import Confirm, DevicePicker, HelpScreen, ImagePicker, ModelPicker, SettingsScreen, TextPrompt
from ..chat.statsline import as_stats, format_stats, stats_parts
from ..runtime.protocol import GenerationStats, can_sample as model_can_sample
from .widgets import AttachmentChip, ChatView, ConversationList, ImageView, MessageBox, PromptInput, StatusBar

DRAIN_HZ = 15.0


class _Session(ChatSession):
    """ChatSession that remembers the prompt length of the current answer (for the context gauge)."""

    last_prompt_tokens = 0

    def _answer(self, ids, **image_args):
        self.last_prompt_tokens = len(ids)
        return super()._answer(ids, **image_args)


class TpuchatApp(App):
    CSS_PATH = str(Path(__file__).with_name("tpuchat.tcss"))
    TITLE = "tpuchat"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("ctrl+r", "retry", "Retry"),
        Binding("ctrl+e", "edit_last", "Edit", show=False, priority=True),
        Binding("ctrl+y", "copy_last", "Copy", show=False, priority=True),
        Binding("ctrl+b", "toggle_sidebar", "Chats"),
        Binding("f2", "pick_model", "Model"),
        Binding("ctrl+o", "pick_model", "Model", show=False),
        Binding("f3", "pick_devices", "Devices"),
        Binding("f4", "settings", "Settings"),
        Binding("f5", "attach_image", "Image", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, backend, model_path: Optional[str] = None, devids: Sequence[int] = (0,),
                 store: Optional[Store] = None, settings: Optional[cfg.Settings] = None,
                 max_new_tokens: Optional[int] = None, system: Optional[str] = None,
                 config_file: Optional[Path] = None, model_dirs: Optional[List[str]] = None):
        super().__init__()
        self.backend = backend
        self.config_file = config_file or cfg.config_path()
        self.defaults = settings if settings is not None else cfg.load(self.config_file)
        if max_new_tokens:
            self.defaults.max_new_tokens = max_new_tokens
        if system is not None:
            self.defaults.system_prompt = system
        self.extra_model_dirs = list(model_dirs or [])
        self.store = store or Store()
        self.model = None
        self.model_path = model_path
        self.devids = list(devids)
        self.load_error: Optional[str] = None
        self.state = "no model"
        self.session = _Session(None, Conversation(system=self.defaults.system_prompt or None))
        self.conv_id: Optional[int] = None
        self.conv_settings: Dict[str, object] = {}
        # streaming
        self._lock = threading.Lock()
        self._pending: List[Tuple[float, str, int]] = []
        self._drain_lock = asyncio.Lock()
        self._answer_box: Optional[MessageBox] = None
        self._answer_row: Optional[int] = None
        self._t_send = 0.0
        self._t_first: Optional[float] = None
        self._tokens = 0
        self._last_save = 0.0
        self.last_stats: GenerationStats = GenerationStats.partial()
        self.ctx_used = 0
        self.latencies: List[float] = []  # token arrival -> on screen, seconds (for the benchmark)
        self.generating = False
        self.pending_image: Optional[Attachment] = None  # goes with the next message
        self.image_dir: Optional[str] = None  # where the image picker opens

    # -- layout ----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield ConversationList(id="sidebar")
            with Vertical(id="main"):
                yield ChatView(id="chat")
                yield AttachmentChip("", id="attachment")
                yield PromptInput(history=self.store.recent_prompts(), newline_key=self.defaults.newline_key,
                                  id="prompt")
        yield StatusBar(id="status")
        yield Footer()

    def _q(self, selector, kind=None):
        """Query the main screen (not whatever modal is on top)."""
        return self.screen_stack[0].query_one(selector, kind) if kind else self.screen_stack[0].query_one(selector)

    @property
    def chat(self) -> ChatView:
        return self._q("#chat", ChatView)

    @property
    def prompt(self) -> PromptInput:
        return self._q("#prompt", PromptInput)

    def on_mount(self) -> None:
        self._q("#attachment", AttachmentChip).show_image(None)
        self.prompt.focus()
        if self.size.width < 100:
            self._q("#sidebar").display = False
        self.refresh_sidebar()
        self._show_welcome()
        self.set_interval(1.0 / DRAIN_HZ, self._tick)
        if self.model_path:
            self.open_model(self.model_path, self.devids)
        else:
            self.call_after_refresh(self._status_line)

    # -- sidebar / conversations -------------------------------------------------
    def refresh_sidebar(self, search: str = "") -> None:
        self._q(ConversationList).fill(self.store.list_conversations(search), self.conv_id)

    @on(Input.Changed, "#conv-search")
    def _search(self, event: Input.Changed) -> None:
        self.refresh_sidebar(event.value.strip())

    @on(ConversationList.Selected)
    async def _open_selected(self, event: ConversationList.Selected) -> None:
        await self.open_conversation(event.conv_id)

    def action_toggle_sidebar(self) -> None:
        sb = self._q("#sidebar")
        sb.display = not sb.display
        if sb.display:
            self._q("#conv-list").focus()
        else:
            self.prompt.focus()

    def _busy(self) -> bool:
        if self.generating:
            self.notify("An answer is streaming: wait, or press Esc to stop it.", severity="warning")
            return True
        return False

    def effective_settings(self) -> cfg.Settings:
        s = dataclasses.replace(self.defaults)
        for k, v in self.conv_settings.items():
            if k in cfg.GEN_KEYS:
                try:
                    setattr(s, k, cfg.coerce(k, v))
                except ValueError:
                    pass
        s.system_prompt = self.session.conv.system or ""
        return s

    def gen_settings(self) -> GenSettings:
        s = self.effective_settings()
        return GenSettings(max_new_tokens=s.max_new_tokens, sample=s.sample, temperature=s.temperature,
                           top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                           seed=None if s.seed < 0 else s.seed)

    async def action_new_conversation(self) -> None:
        if self._busy():
            return
        self.conv_id = None
        self.conv_settings = {}
        self.session.conv = Conversation(system=self.defaults.system_prompt or None)
        self.ctx_used = 0
        self.last_stats = GenerationStats.partial()
        await self.chat.remove_children()
        self._show_welcome()
        self.refresh_sidebar()
        self.prompt.focus()

    async def open_conversation(self, conv_id: int) -> None:
        if self._busy():
            return
        c = self.store.get_conversation(conv_id)
        if c is None:
            return
        msgs = self.store.messages(conv_id)
        self.conv_id = conv_id
        self.conv_settings = dict(c.settings)
        self.session.conv = Conversation(system=c.system,
                                         messages=[Message(m.role, m.content, m.stopped, _stored_attachment(m))
                                                   for m in msgs])
        self.last_stats = GenerationStats.partial()
        self.ctx_used = 0
        await self.chat.remove_children()
        boxes = []
        for m, cm in zip(msgs, self.session.conv.messages):
            if m.role == "user":
                view = ImageView.of_attachment(cm.attachment) if cm.attachment is not None else None
                boxes.append(MessageBox("user", m.content, image=view))
            else:
                boxes.append(MessageBox("assistant", m.content, title=m.model or "Assistant",
                                        footer=format_stats(m.stats, "footer", m.stopped, m.error)))
                if m.stats.prompt_tokens is not None:
                    self.ctx_used = m.stats.prompt_tokens + (m.stats.new_tokens or 0)
        if boxes:
            await self.chat.mount_all(boxes)
        else:
            self._show_welcome()
        self.chat.scroll_end(animate=False)
        self.refresh_sidebar(self._q("#conv-search", Input).value.strip())
        self.prompt.focus()

    def _ensure_conversation(self, first_text: str) -> int:
        if self.conv_id is None:
            title = " ".join(first_text.split())[:48] or "(untitled)"
            c = self.store.new_conversation(title, self.session.conv.system,
                                            self.model.name if self.model else None, self.conv_settings)
            self.conv_id = c.id
            self.refresh_sidebar()
        return self.conv_id

    def action_rename_conversation(self) -> None:
        conv_id = self._q(ConversationList).highlighted_id or self.conv_id
        if conv_id is None:
            self.notify("Nothing to rename yet: the conversation is saved with its first message.")
            return
        c = self.store.get_conversation(conv_id)

        def done(title: Optional[str]) -> None:
            if title and title.strip():
                self.store.rename(conv_id, title.strip())
                self.refresh_sidebar()

        self.push_screen(TextPrompt("Rename conversation", c.title if c else ""), done)

    def action_delete_conversation(self) -> None:
        conv_id = self._q(ConversationList).highlighted_id or self.conv_id
        if conv_id is None:
            return
        c = self.store.get_conversation(conv_id)

        async def done(yes: Optional[bool]) -> None:
            if not yes:
                return
            if conv_id == self.conv_id:
                if self._busy():
                    return
                await self.action_new_conversation()
            self.store.delete_conversation(conv_id)
            self.refresh_sidebar()

        self.push_screen(Confirm(f"Delete “{c.title if c else conv_id}”?"), done)

    def _show_welcome(self) -> None:
        """The hint shown while the chat is empty (updated in place: a removed
        widget stays a child until the next refresh)."""
        if any(w.id != "welcome" for w in self.chat.children):
            return
        if self.model is not None:
            d = self.model.desc
            text = (f"[b]{escape(self.model.name)}[/b] is ready (S {d.seq_len} / L {d.kv_len}). "
                    "Type a message and press Enter."
                    + (" It sees images: /image PATH or F5 attaches one." if d.has_vision else "")
                    + "\n[dim]F1 help · F2 model · F4 settings · Ctrl+B conversations[/dim]")
        elif self.load_error:
            return
        elif self.model_path:
            text = f"Opening [b]{escape(Path(self.model_path).name)}[/b]…"
        else:
            text = "No model open. Press [b]F2[/b] to pick a .bmodel (or start with [b]tpuchat --model FILE[/b])."
        existing = list(self.chat.query("#welcome"))
        if existing:
            existing[0].update(text)
        else:
            self.chat.mount(Static(text, id="welcome"))

    def _drop_welcome(self) -> None:
        for w in self.chat.query("#welcome"):
            w.remove()

    # -- model / devices -------------------------------------------------------
    def open_model(self, path: str, devids: Sequence[int]) -> None:
        self.state = "loading"
        self.load_error = None
        self._load_model(path, list(devids))

    @work(thread=True, exclusive=True, group="load")
    def _load_model(self, path: str, devids: List[int]) -> None:
        try:
            model = self.backend.open_model(path, devids)
        except TpuchatError as e:
            self.call_from_thread(self._model_failed, path, devids, str(e), getattr(e, "log_tail", ""))
            return
        except Exception as e:  # noqa: BLE001 - show anything, never exit
            self.call_from_thread(self._model_failed, path, devids, f"{type(e).__name__}: {e}", "")
            return
        old = self.model
        self.call_from_thread(self._model_ready, model, path, devids)
        if old is not None and old is not model:
            try:
                old.close()
            except Exception:  # noqa: BLE001
                pass

    def _model_ready(self, model, path: str, devids: List[int]) -> None:
        self.model = model
        self.model_path = path
        self.devids = list(devids)
        self.session.model = model
        self.state = "idle"
        self.load_error = None
        if self.conv_id is not None:
            self.store.update_conversation(self.conv_id, model=model.name)
        self._show_welcome()
        pinned = getattr(model, "pinned", None) or {}
        extra = (f"; shared prefix of {pinned['tokens']} tokens kept on the device ({pinned['seconds']:.1f} s)"
                 if pinned.get("tokens") else "")
        self.notify(f"{model.name} ready on device {','.join(map(str, devids))}{extra}")

    def _model_failed(self, path: str, devids: List[int], msg: str, tail: str) -> None:
        self.load_error = msg
        self.state = "error" if self.model is None else "idle"
        self._drop_welcome()
        what = (f"Could not open [b]{escape(Path(path).name)}[/b] on device {','.join(map(str, devids))}:\n"
                f"{escape(msg)}")
        hint = ("\n[dim]What now: F2 picks another model, F3 other devices; `tpuchat doctor` checks the runtime."
                + (" The previous model is still open." if self.model is not None else "") + "[/dim]")
        self.show_error(what + hint, tail)

    def show_error(self, markup: str, tail: str = "") -> None:
        if tail:
            markup += "\n[dim]" + escape(tail) + "[/dim]"
        self.chat.mount(MessageBox("error", markup, title="Error"))
        self.chat.scroll_end(animate=False)

    def model_dirs(self) -> List[str]:
        dirs = [os.getcwd()] + self.extra_model_dirs + list(self.defaults.model_dirs)
        if self.model_path:
            dirs.append(str(Path(self.model_path).expanduser().resolve().parent))
        return dirs

    def action_pick_model(self) -> None:
        if self._busy():
            return

        def done(path: Optional[str]) -> None:
            if path:
                self.open_model(path, self.devids if self.model is None else self.devids)

        self.push_screen(ModelPicker(self.backend, self.model_dirs(), self.model_path), done)

    def action_pick_devices(self) -> None:
        if self._busy():
            return
        needed = self.model.desc.num_device if self.model is not None else 1

        def done(ids: Optional[List[int]]) -> None:
            if ids and self.model_path:
                self.open_model(self.model_path, ids)
            elif ids:
                self.devids = ids

        self.push_screen(DevicePicker(self.backend, self.model if self.state == "idle" else None, needed,
                                      self.devids), done)

    def set_devices(self, text: str) -> None:
        from ..options import parse_devids

        try:
            ids = parse_devids(text)
        except TpuchatError as e:
            self.notify(str(e), severity="error")
            return
        needed = self.model.desc.num_device if self.model is not None else len(ids)
        if len(ids) != needed:
            self.notify(f"This bmodel was compiled for {needed} device{'s' if needed != 1 else ''}, "
                        f"but {len(ids)} were given.", severity="error", timeout=8)
            return
        if self.model_path:
            self.open_model(self.model_path, ids)
        else:
            self.devids = ids

    # -- settings ------------------------------------------------------------------
    def action_settings(self) -> None:
        can_sample = model_can_sample(self.model.desc) if self.model is not None else None

        def done(result) -> None:
            if not result:
                return
            s, scope = result
            self.apply_settings(s, scope)

        self.push_screen(SettingsScreen(self.effective_settings(), str(self.config_file), can_sample), done)

    def apply_settings(self, s: cfg.Settings, scope: str) -> None:
        self.session.conv.system = s.system_prompt or None
        self.conv_settings = s.gen_dict()
        if self.conv_id is not None:
            self.store.update_conversation(self.conv_id, system=self.session.conv.system, settings=self.conv_settings)
        if scope == "default":
            for k in cfg.GEN_KEYS:
                setattr(self.defaults, k, getattr(s, k))
            self.defaults.system_prompt = s.system_prompt
            try:
                p = cfg.save(self.defaults, self.config_file)
                self.notify(f"Saved as default in {p}")
            except OSError as e:
                self.notify(f"Could not save {self.config_file}: {e}", severity="error")
        else:
            self.notify("Settings applied to this conversation")

    # -- sending -------------------------------------------------------------------
    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip() and self.pending_image is None:
            return
        if text.startswith("/") and await self.command(text.strip()):
            return
        if self._busy():
            return
        if self.model is None:
            if self.state == "loading":
                self.notify("The model is still loading; your message stays in the input.", severity="warning")
            else:
                self.notify("No model is open: press F2 to pick one. Your message stays in the input.",
                            severity="error", timeout=8)
            return
        image = self.pending_image
        if image is not None and not self.model.desc.has_vision:
            self.notify(f"{self.model.name} is a text-only model: it cannot take images. Your message and the "
                        "image stay; /image off removes the image, F2 opens a vision model.",
                        severity="error", timeout=8)
            return
        self.prompt.remember(text)
        self.prompt.load_text("")
        self._set_pending(None)
        await self.start_answer(text, image=image)

    async def start_answer(self, text: str, retry: bool = False, image: Optional[Attachment] = None) -> None:
        self._drop_welcome()
        conv_id = self._ensure_conversation(text)
        user_row = None
        if not retry:
            user_row = self.store.add_message(conv_id, "user", text)  # saved before generation starts
            if image is not None:
                self.store.add_attachment(user_row, image.path, image.digest, image.name)
            view = ImageView.of_attachment(image) if image is not None else None
            await self.chat.mount(MessageBox("user", text, image=view))
        box = MessageBox("assistant", "", title=self.model.name, footer="[dim]prefill…[/dim]")
        await self.chat.mount(box)
        self.chat.scroll_end(animate=False)
        self._answer_box = box
        self._answer_row = self.store.add_message(conv_id, "assistant", "", stopped=True, model=self.model.name)
        with self._lock:
            self._pending = []
        self._t_send = time.perf_counter()
        self._t_first = None
        self._tokens = 0
        self._last_save = time.monotonic()
        self.generating = True
        self.state = "prefill"
        self.session.settings = self.gen_settings()
        self._generate(text, user_row, image)

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, text: str, user_row: Optional[int], image: Optional[Attachment] = None) -> None:
        final = None
        try:
            for ev in self.session.send(text, image=image):
                if isinstance(ev, Delta):
                    now = time.perf_counter()
                    with self._lock:
                        if self._t_first is None:
                            self._t_first = now
                        self._tokens += max(1, len(ev.token_ids))
                        self._pending.append((now, ev.text, max(1, len(ev.token_ids))))
                elif isinstance(ev, Notice):
                    self.call_from_thread(self.notify, ev.text, timeout=6)
                elif isinstance(ev, Finished):
                    final = ev
        except (PromptTooLong, ImageError) as e:
            self.call_from_thread(self._refused, text, user_row, str(e), image)
            return
        except EngineCrashed as e:
            self.call_from_thread(self._finish, None, str(e), getattr(e, "log_tail", ""))
            return
        except Exception as e:  # noqa: BLE001 - show it, keep the app
            self.call_from_thread(self._finish, None, f"{type(e).__name__}: {e}" if not isinstance(e, TpuchatError)
                                  else str(e), "")
            return
        self.call_from_thread(self._finish, final, None, "")

    async def _drain(self) -> None:
        async with self._drain_lock:
            with self._lock:
                chunks, self._pending = self._pending, []
            box = self._answer_box
            if not chunks or box is None:
                return
            now = time.perf_counter()
            self.latencies.extend(now - t for t, _, n in chunks for _ in range(n))
            await box.append_text("".join(c for _, c, _ in chunks))
            self.chat.follow()
            if self._answer_row is not None and time.monotonic() - self._last_save > 2.0:
                self._last_save = time.monotonic()
                self.store.update_message(self._answer_row, content=box.text)

    async def _tick(self) -> None:
        if self.generating:
            await self._drain()
            if self.generating and self._t_first is not None and self.state == "prefill":
                self.state = "generating"
            if self.generating and self._t_first is not None:
                if self._answer_box is not None:
                    self._answer_box.set_footer("[dim]" + format_stats(self.live_stats(), "footer", live=True) + " · Esc stops[/dim]")
        self._status_line()

    def live_stats(self) -> GenerationStats:
        if self._t_first is None:
            return GenerationStats.partial()
        now = time.perf_counter()
        n = self._tokens
        tps = (n - 1) / (now - self._t_first) if n > 1 and now > self._t_first else 0.0
        return GenerationStats.partial(ftl_s=self._t_first - self._t_send, tokens_per_s=tps, new_tokens=n)

    async def _finish(self, final: Optional[Finished], error: Optional[str], tail: str) -> None:
        await self._drain()
        box, row = self._answer_box, self._answer_row
        self._answer_box = None
        self._answer_row = None
        self.generating = False
        self.state = "idle" if self.model is not None else "error"
        if box is None:
            return
        conv_msgs = self.session.conv.messages
        stopped = conv_msgs[-1].stopped if conv_msgs and conv_msgs[-1].role == "assistant" else True
        if final is not None:
            await box.finalize(final.text)
            stats = final.stats
            self.last_stats = stats
            self.ctx_used = stats.prompt_tokens + stats.new_tokens
            box.set_footer(format_stats(stats, "footer", stopped))
            if row is not None:
                self.store.update_message(row, content=final.text, stopped=stopped, stats=stats)
        else:
            text = conv_msgs[-1].content if conv_msgs and conv_msgs[-1].role == "assistant" else box.text
            await box.finalize(text)
            stats = as_stats(self.live_stats())
            stats.stop_reason = "failed"
            box.set_footer(format_stats(stats, "footer", True, error or "failed"))
            if row is not None:
                self.store.update_message(row, content=text, stopped=True, stats=stats, error=error or "failed")
            self.show_error(f"The answer failed: {escape(error or '')}\n[dim]What was produced is kept. "
                            "Your next message restarts the engine (Ctrl+R retries this one).[/dim]", tail)
        self.refresh_sidebar(self._q("#conv-search", Input).value.strip())

    async def _refused(self, text: str, user_row: Optional[int], msg: str, image: Optional[Attachment] = None) -> None:
        """The message does not fit the model: take it back out and give it back to the user."""
        box = self._answer_box
        self._answer_box = None
        self.generating = False
        self.state = "idle"
        if self._answer_row is not None:
            self.store.delete_message(self._answer_row)
            self._answer_row = None
        if user_row is not None:
            self.store.delete_message(user_row)
        if box is not None:
            await box.remove()
        users = [b for b in self.chat.query(MessageBox) if b.role == "user"]
        if user_row is not None and users:
            await users[-1].remove()
        if not self.prompt.text.strip():
            self.prompt._set(text)
        if image is not None and self.pending_image is None:
            self._set_pending(image)
        self.show_error(f"Message not sent: {escape(msg)}\n[dim]It is back in the input for editing"
                        + (" (the image is still attached)" if image is not None else "") + ".[/dim]")
        self.prompt.focus()

    def action_stop(self) -> None:
        if self.generating:
            self.state = "stopping"
            threading.Thread(target=self.session.cancel, daemon=True).start()
        elif self._q("#sidebar").display and self.focused is not None and self.focused.id == "conv-list":
            self.prompt.focus()

    async def action_retry(self) -> None:
        if self._busy() or self.model is None:
            return
        msgs = self.session.conv.messages
        if len(msgs) < 2 or msgs[-1].role != "assistant" or msgs[-2].role != "user":
            self.notify("Nothing to retry yet.")
            return
        text = msgs[-2].content
        image = msgs[-2].attachment
        del msgs[-2:]
        boxes = list(self.chat.query(MessageBox))
        if boxes and boxes[-1].role == "error":
            await boxes[-1].remove()
            boxes.pop()
        if boxes and boxes[-1].role == "assistant":
            await boxes[-1].remove()
        if self.conv_id is not None:
            stored = self.store.messages(self.conv_id)
            if stored and stored[-1].role == "assistant":
                self.store.delete_message(stored[-1].id)
        await self.start_answer(text, retry=True, image=image)

    async def action_edit_last(self) -> None:
        if self._busy():
            return
        msgs = self.session.conv.messages
        idx = max((i for i, m in enumerate(msgs) if m.role == "user"), default=None)
        if idx is None:
            return
        text = msgs[idx].content
        image = msgs[idx].attachment
        n_drop = len(msgs) - idx
        del msgs[idx:]
        boxes = [b for b in self.chat.query(MessageBox) if b.role != "error"]
        for b in boxes[-n_drop:]:
            await b.remove()
        if self.conv_id is not None:
            for m in self.store.messages(self.conv_id)[-n_drop:]:
                self.store.delete_message(m.id)
        self.prompt._set(text)
        if image is not None and not image.gone:
            self._set_pending(image)
        self.prompt.focus()

    def last_answer(self) -> Optional[str]:
        for m in reversed(self.session.conv.messages):
            if m.role == "assistant":
                return m.content
        return None

    def action_copy_last(self) -> None:
        text = self.last_answer()
        if text:
            self.copy_to_clipboard(text)
            self.notify("Last answer copied (OSC 52)")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- slash commands ------------------------------------------------------------
    async def command(self, line: str) -> bool:
        """Run a slash command; False if `line` is not one (then it is sent as a message)."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        known = {"/new", "/clear", "/model", "/devices", "/system", "/set", "/settings", "/export", "/help",
                 "/retry", "/rename", "/copy", "/quit", "/exit", "/image"}
        if cmd not in known:
            if re.fullmatch(r"/[a-z]+", cmd):
                self.notify(f"Unknown command {cmd}: /help lists them. Your text stays in the input.",
                            severity="warning")
                return True
            return False
        if cmd == "/image":
            # On an error the command stays in the input for correcting.
            if arg.lower() in ("off", "none", "remove", "clear"):
                self.prompt.load_text("")
                self._set_pending(None)
                self.notify("Image removed from the next message")
            elif arg:
                if self.attach_image(arg):
                    self.prompt.load_text("")
            else:
                self.prompt.load_text("")
                self.action_attach_image()
            return True
        self.prompt.load_text("")
        if cmd == "/new":
            await self.action_new_conversation()
        elif cmd == "/clear":
            if not self._busy():
                self.session.conv.clear()
                if self.conv_id is not None:
                    self.store.clear_messages(self.conv_id)
                await self.chat.remove_children()
                self.ctx_used = 0
                self._show_welcome()
        elif cmd == "/model":
            if arg:
                if not self._busy():
                    self.open_model(os.path.expanduser(arg), self.devids)
            else:
                self.action_pick_model()
        elif cmd == "/devices":
            if arg:
                if not self._busy():
                    self.set_devices(arg)
            else:
                self.action_pick_devices()
        elif cmd == "/system":
            self.session.conv.system = arg or None
            if self.conv_id is not None:
                self.store.update_conversation(self.conv_id, system=self.session.conv.system)
            self.notify("System prompt " + ("set" if arg else "cleared") + " for this conversation")
        elif cmd == "/set":
            self.set_params(arg)
        elif cmd == "/settings":
            self.action_settings()
        elif cmd == "/export":
            self.export(arg)
        elif cmd == "/help":
            self.action_help()
        elif cmd == "/retry":
            await self.action_retry()
        elif cmd == "/rename":
            if self.conv_id is None:
                self.notify("Nothing to rename yet: the conversation is saved with its first message.")
            elif arg:
                self.store.rename(self.conv_id, arg)
                self.refresh_sidebar()
        elif cmd == "/copy":
            self.action_copy_last()
        elif cmd in ("/quit", "/exit"):
            await self.action_quit()
        return True

    def set_params(self, arg: str) -> None:
        if not arg:
            s = self.effective_settings()
            self.notify(" ".join(f"{k}={getattr(s, k)}" for k in cfg.GEN_KEYS), timeout=10)
            return
        s = self.effective_settings()
        try:
            for item in arg.replace(",", " ").split():
                k, eq, v = item.partition("=")
                k = k.strip().replace("-", "_")
                if k == "greedy":
                    k, v, eq = "sample", "off", "="
                if not eq or k not in cfg.GEN_KEYS:
                    raise ValueError(f"use KEY=VALUE with KEY one of {', '.join(cfg.GEN_KEYS)}")
                setattr(s, k, cfg.coerce(k, v))
        except ValueError as e:
            self.notify(str(e), severity="error", timeout=8)
            return
        problem = cfg.validate(s)
        if problem:
            self.notify(problem, severity="error")
            return
        self.apply_settings(s, "conversation")

    def export(self, arg: str) -> None:
        if self.conv_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        parts = arg.split(maxsplit=1)
        fmts = ["md", "json"]
        target = None
        if parts and parts[0].lower() in ("md", "markdown", "json"):
            fmts = ["json" if parts[0].lower() == "json" else "md"]
            target = parts[1] if len(parts) > 1 else None
        elif parts:
            target = arg
            if target.endswith(".json"):
                fmts = ["json"]
            elif target.endswith(".md"):
                fmts = ["md"]
        c = self.store.get_conversation(self.conv_id)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", c.title if c else "").strip("-").lower()[:40] or "chat"
        written = []
        try:
            for f in fmts:
                if target and len(fmts) == 1:
                    path = Path(os.path.expanduser(target))
                else:
                    base = Path(os.path.expanduser(target)) if target else Path.cwd()
                    path = base / f"tpuchat-{self.conv_id}-{slug}.{f}"
                data = self.store.export_json(self.conv_id) if f == "json" else self.store.export_markdown(self.conv_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(data, encoding="utf-8")
                written.append(str(path))
        except OSError as e:
            self.notify(f"Export failed: {e}", severity="error")
            return
        self.notify("Exported to " + ", ".join(written), timeout=8)

    # -- images ----------------------------------------------------------------------
    def _set_pending(self, att: Optional[Attachment]) -> None:
        self.pending_image = att
        self._q("#attachment", AttachmentChip).show_image(
            ImageView.of_attachment(att, with_preview=False) if att is not None else None)

    def attach_image(self, path: str) -> bool:
        """Attach an image file to the next message; False (and a one-line error) if it cannot be."""
        from ..chat.session import attach_image

        path = os.path.expanduser(path.strip().strip("'\""))
        if self.model is not None and not self.model.desc.has_vision:
            self.notify(f"{self.model.name} is a text-only model: it cannot take images (F2 opens a vision "
                        "model).", severity="error", timeout=8)
            return False
        if self.pending_image is not None:
            self.notify(f"The next message already has an image ({self.pending_image.name}) and the model takes "
                        "one image per message: /image off removes it first.", severity="error", timeout=8)
            return False
        try:
            att = attach_image(path)
        except ImageError as e:
            self.notify(str(e), severity="error", timeout=8)
            return False
        self._set_pending(att)
        self.image_dir = str(Path(att.path).parent) if att.path else self.image_dir
        return True

    def action_attach_image(self) -> None:
        def done(path: Optional[str]) -> None:
            if path:
                self.attach_image(path)
            self.prompt.focus()

        self.push_screen(ImagePicker(self.image_dir or os.getcwd()), done)

    # -- status bar ---------------------------------------------------------------
    def _status_line(self) -> None:
        if not self.screen_stack or not self.is_running:
            return
        from rich.text import Text

        rest = []
        if self.model is not None:
            rest.append("dev " + ",".join(map(str, self.devids)))
        colours = {"idle": "green", "loading": "yellow", "prefill": "yellow", "generating": "cyan",
                   "stopping": "yellow", "error": "red", "no model": "red"}
        rest.append(f"[b {colours.get(self.state, 'white')}]{self.state}[/]")
        st = self.live_stats() if self.generating else self.last_stats
        rest += stats_parts(st, "status")
        if self.model is not None:
            d = self.model.desc
            used = self.ctx_used
            if self.generating:
                used = self.session.last_prompt_tokens + self._tokens
            rest.append(f"ctx {used}/{d.kv_len}")
            total = sum(x.mem_total_mb for x in d.devices)
            if total > 0:
                usedm = sum(x.mem_used_mb for x in d.devices)
                rest.append(f"mem {usedm / 1024:.1f}/{total / 1024:.1f}G")
            else:
                rest.append("mem n/a")
        name = self.model.name if self.model is not None else (Path(self.model_path).name if self.model_path else "")
        sep = " │ "
        width = self.size.width - 2

        def cells(parts) -> int:
            return Text.from_markup(sep.join(parts)).cell_len

        # Narrow terminal: drop memory, then the device ids, then shorten the model name.
        for drop in ("mem ", "dev "):
            if name and cells([name] + rest) > width:
                rest = [p for p in rest if not p.startswith(drop)]
        tail = sep.join(rest)
        if name:
            room = max(10, width - cells(rest) - len(sep))
            if len(name) > room:
                name = name[: room - 1] + "…"
            line = f"[b]{escape(name)}[/b]{sep}{tail}"
        else:
            line = tail
        self._q(StatusBar).show(line)

    # -- command palette --------------------------------------------------------------
    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield SystemCommand("New conversation", "Start an empty conversation (Ctrl+N)", self.action_new_conversation)
        yield SystemCommand("Pick model", "Open another .bmodel; the conversation is kept (F2)", self.action_pick_model)
        yield SystemCommand("Pick devices", "Choose device ids (F3)", self.action_pick_devices)
        yield SystemCommand("Settings", "System prompt, sampling, max tokens (F4)", self.action_settings)
        yield SystemCommand("Retry", "Answer the last message again (Ctrl+R)", self.action_retry)
        yield SystemCommand("Export conversation", "Write Markdown and JSON to the current dir",
                            lambda: self.export(""))
        yield SystemCommand("Copy last answer", "OSC 52 clipboard (Ctrl+Y)", self.action_copy_last)
        yield SystemCommand("Toggle conversation list", "Ctrl+B", self.action_toggle_sidebar)
        yield SystemCommand("Attach image", "Pick an image for the next message (F5, /image PATH)",
                            self.action_attach_image)
        yield SystemCommand("Keys and commands", "The help screen (F1)", self.action_help)

    async def action_quit(self) -> None:
        if self.generating:
            self.session.cancel()
        self.exit(0)

    def on_unmount(self) -> None:
        m = self.model
        if m is not None:
            try:
                m.close()
            except Exception:  # noqa: BLE001
                pass


def _stored_attachment(m) -> Optional[Attachment]:
    """The image of a stored message, as the conversation holds it (read again when needed)."""
    for a in getattr(m, "attachments", None) or []:
        if a.kind == "image":
            return Attachment(a.path, a.digest, a.name or (Path(a.path).name if a.path else "image"))
    return None
