"""The chat App: sidebar (saved conversations), chat view, input, status bar.

The App routes: keys, slash commands (commands.py) and screens to the
ConversationController (chat/controller.py), which holds the conversation,
the store and the live figures, and renders what it says.  Generation runs
in a thread worker that only appends text to the controller's buffer; a
timer drains the buffer into the answer's Markdown ~15 times a second, so a
fast model never floods the screen (or an SSH link) and the decode loop never
waits on the screen.  The status bar is redrawn by the same timer.
"""

import asyncio
import threading
from pathlib import Path
from typing import List, Optional, Sequence

from rich.markup import escape
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input

from .. import config as cfg
from ..chat.controller import ConversationController
from ..chat.conversation import Attachment
from ..chat.session import Notice
from ..chat.statsline import format_stats
from ..errors import ImageError, PromptTooLong
from ..runtime.protocol import can_sample
from ..store import Store
from . import commands
from .commands_app import SlashCommands
from .conversations_app import Conversations
from .models_app import ModelSwitching
from .screens import HelpScreen, SettingsScreen
from .status import UiState, model_label, status_line
from .widgets import AttachmentChip, ChatView, ConversationList, ImageView, MessageBox, PromptInput, StatusBar

# Streamed text moves to the screen DRAIN_HZ times a second (each move is a frame: about 10 ms
# of CPU here, several times that on a board's A53); the live figures change STATS_HZ times.
DRAIN_HZ = 8.0
STATS_HZ = 2.0


class TpuchatApp(SlashCommands, ModelSwitching, Conversations, App):
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
        defaults = settings if settings is not None else cfg.load(self.config_file)
        if max_new_tokens:
            defaults.max_new_tokens = max_new_tokens
        if system is not None:
            defaults.system_prompt = system
        self.extra_model_dirs = list(model_dirs or [])
        self.store = store or Store()
        self.ctl = ConversationController(self.store, defaults)
        self.model = None
        self.model_path = model_path
        self.devids = list(devids)
        self.load_error: Optional[str] = None
        self.state = UiState.NO_MODEL
        self._answer_box: Optional[MessageBox] = None
        self._streaming = False
        self._drain_lock = asyncio.Lock()
        self.pending_image: Optional[Attachment] = None  # goes with the next message
        self.image_dir: Optional[str] = None  # where the image picker opens
        self._sidebar_stale = True  # the conversation list changed while the sidebar was hidden
        self._ticks = 0
        self._status_state: Optional[UiState] = None  # the state the status bar shows

    # -- what tests and the benchmark read ------------------------------------------------------
    session = property(lambda self: self.ctl.session)
    conv_id = property(lambda self: self.ctl.conv_id)
    generating = property(lambda self: self._streaming)  # from send until the answer is on screen in full
    last_stats = property(lambda self: self.ctl.last_stats)
    latencies = property(lambda self: self.ctl.buffer.latencies)  # token arrival -> on screen, seconds
    defaults = property(lambda self: self.ctl.defaults)

    def live_stats(self):
        return self.ctl.live_stats()

    def gen_settings(self):
        return self.ctl.gen_settings()

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

    chat = property(lambda self: self._q("#chat", ChatView))
    prompt = property(lambda self: self._q("#prompt", PromptInput))

    def on_mount(self) -> None:
        self._q("#attachment", AttachmentChip).show_image(None)
        self.prompt.focus()
        if self.size.width < 100:
            self._q("#sidebar").display = False
        self.refresh_sidebar()
        self._show_welcome()
        self.set_interval(1.0 / DRAIN_HZ, self._tick)
        if self.model_path:
            # after the first frame: the loader thread (tokenizer, worker start) would delay it
            self.state = UiState.LOADING
            self.call_after_refresh(self.open_model, self.model_path, self.devids)
        else:
            self.call_after_refresh(self._status_line)

    # -- sidebar / conversations -------------------------------------------------
    def refresh_sidebar(self, search: Optional[str] = None) -> None:
        """Show the saved conversations; a hidden sidebar is filled when it is shown (a send
        would otherwise rebuild it in the frames where the answer's first tokens appear)."""
        sidebar = self._q(ConversationList)
        self._sidebar_stale = not sidebar.display
        if self._sidebar_stale:
            return
        if search is None:
            search = self._q("#conv-search", Input).value.strip()
        sidebar.fill(self.store.list_conversations(search), self.conv_id)

    @on(Input.Changed, "#conv-search")
    def _search(self, event: Input.Changed) -> None:
        self.refresh_sidebar(event.value.strip())

    @on(ConversationList.Selected)
    async def _open_selected(self, event: ConversationList.Selected) -> None:
        await self.open_conversation(event.conv_id)

    def action_toggle_sidebar(self) -> None:
        sb = self._q("#sidebar")
        sb.display = not sb.display
        if sb.display and self._sidebar_stale:
            self.refresh_sidebar()
        (self._q("#conv-list") if sb.display else self.prompt).focus()

    def _busy(self) -> bool:
        if self.generating:
            self.notify("An answer is streaming: wait, or press Esc to stop it.", severity="warning")
        return self.generating

    def show_error(self, markup: str, tail: str = "") -> None:
        if tail:
            markup += "\n[dim]" + escape(tail) + "[/dim]"
        self.chat.mount(MessageBox("error", markup, title="Error"))
        self.chat.scroll_end(animate=False)

    # -- settings ------------------------------------------------------------------
    def action_settings(self) -> None:
        sample = can_sample(self.model.desc) if self.model is not None else None
        self.push_screen(SettingsScreen(self.ctl.effective_settings(), str(self.config_file), sample),
                         lambda result: result and self.apply_settings(*result))

    def apply_settings(self, s: cfg.Settings, scope: str) -> None:
        try:
            self.notify(self.ctl.apply_settings(s, scope, self.config_file))
        except OSError as e:
            self.notify(f"Could not save {self.config_file}: {e}", severity="error")

    # -- sending -------------------------------------------------------------------
    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip() and self.pending_image is None:
            return
        if text.startswith("/") and await self.command(text.strip()):
            return
        if self._busy() or not self._can_send(self.pending_image):
            return
        image = self.pending_image
        self.prompt.remember(text)
        self.prompt.load_text("")
        self._set_pending(None)
        await self.start_answer(text, image=image)

    def _can_send(self, image: Optional[Attachment]) -> bool:
        """Say why not (the message stays in the input)."""
        if self.model is None:
            if self.state == UiState.LOADING:
                self.notify("The model is still loading; your message stays in the input.", severity="warning")
            else:
                self.notify("No model is open: press F2 to pick one. Your message stays in the input.",
                            severity="error", timeout=8)
            return False
        if image is not None and not self.model.desc.has_vision:
            self.notify(f"{self.model.name} is a text-only model: it cannot take images. Your message and the "
                        "image stay; /image off removes the image, F2 opens a vision model.",
                        severity="error", timeout=8)
            return False
        return True

    async def start_answer(self, text: str, retry: bool = False, image: Optional[Attachment] = None) -> None:
        self._drop_welcome()
        if not retry:
            view = ImageView.of_attachment(image) if image is not None else None
            await self.chat.mount(MessageBox("user", text, image=view))
        box = MessageBox("assistant", "", title=self.model.name, footer="[dim]prefill…[/dim]")
        await self.chat.mount(box)
        self.chat.scroll_end(animate=False)
        self._answer_box, self._streaming = box, True
        self.ctl.begin(text, image, retry)  # saves the message before generation starts
        self.refresh_sidebar()
        self.state = UiState.PREFILL
        self._generate(text, retry, image)

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, text: str, retry: bool, image: Optional[Attachment] = None) -> None:
        try:
            for ev in self.ctl.answer(text, image):
                if isinstance(ev, Notice):
                    self.call_from_thread(self.notify, ev.text, timeout=6)
        except (PromptTooLong, ImageError) as e:
            self.call_from_thread(self._refused, text, retry, str(e), image)
            return
        except Exception as e:  # noqa: BLE001 - shown, the app stays
            self.call_from_thread(self._finish, getattr(e, "log_tail", ""))
            return
        self.call_from_thread(self._finish, "")

    async def _drain(self) -> None:
        async with self._drain_lock:
            box = self._answer_box
            text = self.ctl.buffer.take() if box is not None else ""
            if text:
                await box.append_text(text)
                self.chat.follow()

    async def _tick(self) -> None:
        self._ticks += 1
        # Text moves at DRAIN_HZ, the live figures (answer footer, status bar) at STATS_HZ: each
        # update renders its markup and repaints its line again.
        stats_now = self._ticks % round(DRAIN_HZ / STATS_HZ) == 0
        if self.generating:
            await self._drain()
            if self.ctl.buffer.t_first is not None:
                if self.state == UiState.PREFILL:
                    self.state = UiState.GENERATING
                    stats_now = True
                if self._answer_box is not None and stats_now:
                    live = format_stats(self.live_stats(), "footer", live=True)
                    self._answer_box.set_footer(f"[dim]{live} · Esc stops[/dim]")
        if stats_now or not self.generating or self.state != self._status_state:
            self._status_state = self.state
            self._status_line()

    async def _finish(self, tail: str) -> None:
        await self._drain()
        box, self._answer_box = self._answer_box, None
        self.state = UiState.IDLE if self.model is not None else UiState.ERROR
        r = self.ctl.result
        if box is None or r is None:
            self._streaming = False
            return
        await box.finalize(r.text)
        box.set_footer(format_stats(r.stats, "footer", r.stopped, r.error))
        self._streaming = False
        if r.error:
            self.show_error(f"The answer failed: {escape(r.error)}\n[dim]What was produced is kept. "
                            "Your next message restarts the engine (Ctrl+R retries this one).[/dim]", tail)
        self.refresh_sidebar()

    async def _refused(self, text: str, retry: bool, msg: str, image: Optional[Attachment] = None) -> None:
        """The message does not fit the model: take it back out and give it back to the user."""
        box, self._answer_box, self._streaming = self._answer_box, None, False
        self.state = UiState.IDLE
        if box is not None:
            await box.remove()
        users = [b for b in self.chat.query(MessageBox) if b.role == "user"]
        if not retry and users:
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
            self.state = UiState.STOPPING
            threading.Thread(target=self.ctl.cancel, daemon=True).start()
        elif self._q("#sidebar").display and self.focused is not None and self.focused.id == "conv-list":
            self.prompt.focus()

    async def action_retry(self) -> None:
        if self._busy() or self.model is None:
            return
        taken = self.ctl.take_back_answer()
        if taken is None:
            self.notify("Nothing to retry yet.")
            return
        boxes = list(self.chat.query(MessageBox))
        for role in ("error", "assistant"):
            if boxes and boxes[-1].role == role:
                await boxes.pop().remove()
        await self.start_answer(taken[0], retry=True, image=taken[1])

    async def action_edit_last(self) -> None:
        taken = None if self._busy() else self.ctl.take_back_last_message()
        if taken is None:
            return
        text, image, n_drop = taken
        for b in [b for b in self.chat.query(MessageBox) if b.role != "error"][-n_drop:]:
            await b.remove()
        self.prompt._set(text)
        if image is not None and not image.gone:
            self._set_pending(image)
        self.prompt.focus()

    def action_copy_last(self) -> None:
        text = self.ctl.last_answer()
        if text:
            self.copy_to_clipboard(text)
            self.notify("Last answer copied (OSC 52)")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- slash commands (the table is commands.COMMANDS) ------------------------------------------
    async def command(self, line: str) -> bool:
        """Run a slash command; False if `line` is not one (then it is sent as a message)."""
        cmd, arg, looks_like_one = commands.parse(line)
        if cmd is None:
            if looks_like_one:
                self.notify(f"Unknown command {line.split()[0]}: /help lists them. Your text stays in the input.",
                            severity="warning")
            return looks_like_one
        self.prompt.remember(line)  # Up brings a command back, to run again or correct
        if cmd.name != "/image":  # /image keeps a bad path in the input for correcting
            self.prompt.load_text("")
        result = getattr(self, cmd.handler)(arg)
        if asyncio.iscoroutine(result):
            await result
        return True

    # -- status bar and palette ---------------------------------------------------------------------
    def _status_line(self) -> None:
        if self.screen_stack and self.is_running:
            desc = self.model.desc if self.model is not None else None
            self._q(StatusBar).show(status_line(model_label(self.model, self.model_path), self.state,
                                                self.live_stats() if self.generating else self.last_stats,
                                                self.size.width - 2, self.devids, desc,
                                                self.ctl.context_used()))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for c in commands.COMMANDS:
            if c.palette:
                yield SystemCommand(c.palette, c.palette_help, lambda c=c: getattr(self, c.handler)(""))

    async def action_quit(self) -> None:
        if self.generating:
            self.ctl.cancel()
        self.exit(0)

    def on_unmount(self) -> None:
        if self.model is not None:
            try:
                self.model.close()
            except Exception:  # noqa: BLE001
                pass
