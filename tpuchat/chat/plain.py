"""`tpuchat chat --plain`: a line-based chat for dumb terminals and scripts.

Streams each answer and prints FTL and TPS after it.  Commands: /clear,
/new, /system TEXT, /exit.  Ctrl+C stops the answer (what was produced is
kept); Ctrl+C again at the prompt, or Ctrl+D, exits.  A message that fails
(too long, engine crash) is offered again on the next prompt line.
"""

import signal
import sys
from typing import Optional, Sequence

from ..errors import EngineCrashed, PromptTooLong, TpuchatError
from ..runtime.client import DoneEvent, EngineClient
from .conversation import Conversation

HELP = "commands: /clear (forget history) /new (same) /system TEXT (set system prompt) /exit"


class PlainChat:
    def __init__(self, client: EngineClient, tok, desc: dict, max_new_tokens: int, system: Optional[str],
                 out=sys.stdout, err=sys.stderr):
        self.client, self.tok, self.desc = client, tok, desc
        self.max_new_tokens = max_new_tokens
        self.conv = Conversation(system=system)
        self.out, self.err = out, err
        self.refill = ""  # text to offer again on the next prompt

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
            self.conv.clear()
            self.say("(history cleared)")
        elif cmd == "/system":
            self.conv.system = arg.strip() or None
            self.say(f"(system prompt {'set' if self.conv.system else 'cleared'})")
        else:
            self.say(HELP)
        return True

    def answer(self, text: str) -> None:
        self.conv.add("user", text)
        room = min(self.max_new_tokens, max(1, self.desc["kv_len"] // 4))
        try:
            ids, dropped = self.conv.fit(self.tok, self.desc["seq_len"], self.desc["kv_len"], room)
        except PromptTooLong as e:
            self.conv.messages.pop()
            self.refill = text
            self.say(f"error: {e}")
            return
        if dropped:
            self.say(f"(left out the {dropped} oldest turn{'s' if dropped > 1 else ''} to fit the context)")
        from ..text.stream import IncrementalDecoder

        dec = IncrementalDecoder(self.tok)
        generated, stats = [], {}
        cancelled = []

        def on_sigint(signum, frame):
            # First Ctrl+C stops the answer (the worker finishes within a
            # token and reports); a second one leaves the chat.
            if cancelled:
                raise KeyboardInterrupt
            cancelled.append(True)
            self.client.cancel()

        old_handler = signal.signal(signal.SIGINT, on_sigint)
        try:
            for ev in self.client.generate(ids, self.max_new_tokens, sorted(self.tok.eos_ids)):
                if isinstance(ev, DoneEvent):
                    stats = ev.stats
                else:
                    generated.append(ev.id)
                    self.out.write(dec.push(ev.id))
                    self.out.flush()
        except EngineCrashed as e:
            self.out.write(dec.flush() + "\n")
            self.conv.add("assistant", self.tok.decode(generated), stopped=True)
            self.say(f"error: {e}")
            tail = getattr(e, "log_tail", "")
            if tail:
                self.say(tail)
            self.say("(the engine will restart with your next message)")
            return
        finally:
            signal.signal(signal.SIGINT, old_handler)
        self.out.write(dec.flush() + "\n")
        self.out.flush()
        reason = stats.get("stop_reason", "")
        self.conv.add("assistant", self.tok.decode(generated), stopped=reason in ("cancelled", "context_full"))
        note = {"cancelled": " (stopped)", "context_full": " (context full: /clear to start over)",
                "max_tokens": " (max tokens)"}.get(reason, "")
        self.say(f"FTL {stats.get('ftl_s', 0):.3f} s | TPS {stats.get('tokens_per_s', 0):.2f} tokens/s{note}")

    def loop(self) -> int:
        self.say(f"{self.desc['path'].rsplit('/', 1)[-1]} · S {self.desc['seq_len']} / L {self.desc['kv_len']} · "
                 f"{self.desc['runtime']['kind']} · {HELP}")
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
                   max_new_tokens: int, system: Optional[str]) -> int:
    from ..runtime.bmodel_file import check_bmodel_file
    from ..text import find_tokenizer_dir, load_tokenizer

    check_bmodel_file(model)
    tok = load_tokenizer(find_tokenizer_dir(tokenizer_dir, model))
    with EngineClient() as client:
        desc = client.open(model, devids, lib_dir)
        return PlainChat(client, tok, desc, max_new_tokens, system).loop()
