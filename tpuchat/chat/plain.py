"""`tpuchat chat --plain`: a line-based chat for dumb terminals and scripts.

Streams each answer and prints FTL and TPS after it.  Commands: /clear,
/new, /system TEXT, /image PATH (vision models: the image goes with the next
message; /image off removes it), /exit.  Ctrl+C stops the answer (what was produced is
kept); Ctrl+C again at the prompt, or Ctrl+D, exits.  A message that fails
(too long, engine crash) is offered again on the next prompt line.
"""

import dataclasses
import signal
import sys
from typing import Optional, Sequence

from ..errors import EngineCrashed, ImageError, PromptTooLong
from .conversation import Attachment, Conversation
from ..options import check_can_sample
from .. import config as cfg
from .controller import ConversationController
from .session import ChatModel, Delta, Finished, GenSettings, ModelSpec, Notice, open_chat_model
from .statsline import format_stats

HELP = ("commands: /clear (forget history) /new (same) /system TEXT (set system prompt) "
        "/image PATH (attach an image to the next message; /image off) /exit")


class PlainChat:
    def __init__(self, model: ChatModel, max_new_tokens: int, system: Optional[str], out=sys.stdout,
                 err=sys.stderr, settings: Optional[GenSettings] = None):
        self.model = model
        self.ctl = ConversationController(defaults=cfg.Settings(system_prompt=system or ""), model=model)
        self.settings = settings or GenSettings(max_new_tokens)
        self.out, self.err = out, err
        self.refill = ""  # text to offer again on the next prompt
        self.pending_image: Optional[Attachment] = None  # goes with the next message

    @property
    def conv(self) -> Conversation:
        return self.ctl.conv

    @property
    def session(self):
        return self.ctl.session

    def say(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def read_line(self) -> Optional[str]:
        prefill = self.refill
        self.refill = ""
        try:
            import readline

            readline.set_startup_hook(lambda: readline.insert_text(prefill) if prefill else None)
        except ImportError:  # pragma: no cover - no readline on this platform
            readline = None
        try:
            if sys.stdin.isatty():
                return input(">>> ")
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        finally:
            if readline is not None:
                readline.set_startup_hook(None)

    def command(self, line: str) -> bool:
        """Handle a slash command; False means exit."""
        cmd, _, arg = line.partition(" ")
        if cmd in ("/exit", "/quit"):
            return False
        if cmd in ("/clear", "/new"):
            self.ctl.clear()
            self.say("(history cleared)")
        elif cmd == "/image":
            self.image_command(arg.strip())
        elif cmd == "/system":
            self.ctl.set_system(arg.strip())
            self.say(f"(system prompt {'set' if self.conv.system else 'cleared'})")
        else:
            self.say(HELP)
        return True

    def image_command(self, arg: str) -> None:
        from .session import attach_image, check_vision

        if arg.lower() in ("off", "none", "remove", "clear"):
            self.pending_image = None
            self.say("(image removed)")
            return
        if not arg:
            self.say("usage: /image PATH (the image goes with your next message), /image off")
            return
        if self.pending_image is not None:
            self.say(f"error: the next message already has an image ({self.pending_image.name}) and the model takes "
                     "one image per message: /image off removes it first")
            return
        try:
            check_vision(self.model.desc, self.model.name)
            self.pending_image = attach_image(arg.strip("'\""))
        except ImageError as e:
            self.refill = "/image " + arg
            self.say(f"error: {e}")
            return
        img = self.pending_image.loaded
        self.say(f"(image attached: {img.describe() if img is not None else self.pending_image.name}; "
                 "it goes with your next message)")

    def answer(self, text: str) -> None:
        cancelled = []
        image, self.pending_image = self.pending_image, None

        def on_sigint(signum, frame):
            # First Ctrl+C stops the answer (the worker finishes within a
            # token and reports); a second one leaves the chat.
            if cancelled:
                raise KeyboardInterrupt
            cancelled.append(True)
            self.ctl.cancel()

        old_handler = signal.signal(signal.SIGINT, on_sigint)
        try:
            self.ctl.begin(text, image)
            self.ctl.session.settings = self.settings  # the command line's, not a settings file's
            for ev in self.ctl.answer(text, image):
                if isinstance(ev, Delta):
                    self.out.write(ev.text)
                    self.out.flush()
                elif isinstance(ev, Notice):
                    self.say(f"({ev.text})")
                elif isinstance(ev, Finished):
                    self.out.write("\n")
                    self.out.flush()
                    self.say(format_stats(ev.stats, "plain"))
        except (PromptTooLong, ImageError) as e:
            self.refill = text
            self.pending_image = image  # kept for the retry
            self.say(f"error: {e}")
        except EngineCrashed as e:
            self.out.write("\n")
            self.say(f"error: {e}")
            tail = getattr(e, "log_tail", "")
            if tail:
                self.say(tail)
            self.say("(the engine will restart with your next message)")
        finally:
            signal.signal(signal.SIGINT, old_handler)

    def loop(self) -> int:
        d = self.model.desc
        self.say(f"{self.model.name} · S {d.seq_len} / L {d.kv_len} · {d.runtime.kind if d.runtime else '?'} · {HELP}")
        interrupted_once = False
        while True:
            try:
                line = self.read_line()
            except KeyboardInterrupt:
                if interrupted_once:
                    self.out.write("\n")
                    return 0
                interrupted_once = True
                self.say("\n(Ctrl+C again to exit)")
                continue
            except EOFError:
                self.out.write("\n")
                return 0
            if line is None:
                return 0
            interrupted_once = False
            if not line.strip():
                continue
            if line.startswith("/"):
                if not self.command(line.strip()):
                    return 0
                continue
            try:
                self.answer(line)
            except KeyboardInterrupt:
                return 130


def run_plain_chat(model: str, devids: Sequence[int], lib_dir: Optional[str], tokenizer_dir: Optional[str],
                   max_new_tokens: int, system: Optional[str], shared_prefix: bool = False,
                   settings: Optional[GenSettings] = None) -> int:
    """shared_prefix: `system` is a long shared document; compute it once and keep it on the device.
    settings: sampling (greedy when None)."""
    spec = ModelSpec(model, devids, lib_dir, tokenizer_dir, system if shared_prefix else None)
    chat_model = open_chat_model(spec)
    try:
        settings = dataclasses.replace(settings or GenSettings(), max_new_tokens=max_new_tokens)
        check_can_sample(settings, chat_model.desc)
        if spec.shared_prefix:
            p = chat_model.pinned
            print(f"(shared prefix: {p['tokens']} tokens kept on the device, computed in {p['seconds']:.2f} s)",
                  file=sys.stderr, flush=True)
        return PlainChat(chat_model, max_new_tokens, system, settings=settings).loop()
    finally:
        chat_model.close()
