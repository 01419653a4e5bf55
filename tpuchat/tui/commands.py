"""The chat UI's slash commands: one table feeds the parser, the help screen
and the command palette.  Each entry names the App method that runs it
(`cmd_<name>(arg)`, sync or async)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Command:
    name: str  # "/model"
    usage: str  # as the help screen shows it
    help: str
    palette: str = ""  # title in the command palette ("" : not listed there)
    palette_help: str = ""
    aliases: Tuple[str, ...] = ()

    @property
    def handler(self) -> str:
        return "cmd_" + self.name.lstrip("/")


COMMANDS = (
    Command("/new", "/new", "start a new conversation", "New conversation", "Start an empty conversation (Ctrl+N)"),
    Command("/clear", "/clear", "forget this conversation's messages"),
    Command("/model", "/model [PATH]", "pick or open a model (the conversation is kept)",
            "Pick model", "Open another .bmodel; the conversation is kept (F2)"),
    Command("/devices", "/devices [IDS]", "pick devices, or open on e.g. 2,3", "Pick devices", "Choose device ids (F3)"),
    Command("/system", "/system [TEXT]", "set (or clear) the system prompt of this conversation"),
    Command("/set", "/set KEY=VALUE …",
            "sample=on temperature=0.7 top_p=0.9 top_k=40 repetition_penalty=1.1 max_new_tokens=256 seed=1"),
    Command("/settings", "/settings", "open the settings screen", "Settings", "System prompt, sampling, max tokens (F4)"),
    Command("/retry", "/retry", "answer the last message again", "Retry", "Answer the last message again (Ctrl+R)"),
    Command("/rename", "/rename TITLE", "rename this conversation"),
    Command("/export", "/export [md|json] [PATH]", "write this conversation to Markdown and/or JSON",
            "Export conversation", "Write Markdown and JSON to the current dir"),
    Command("/copy", "/copy", "copy the last answer", "Copy last answer", "OSC 52 clipboard (Ctrl+Y)"),
    Command("/chats", "/chats", "show / hide the conversation list", "Toggle conversation list", "Ctrl+B"),
    Command("/image", "/image [PATH|off]",
            "attach an image to the next message (a picker without PATH; off removes it)",
            "Attach image", "Pick an image for the next message (F5, /image PATH)"),
    Command("/help", "/help", "this screen", "Keys and commands", "The help screen (F1)"),
    Command("/quit", "/quit", "leave", aliases=("/exit",)),
)

_BY_NAME = {n: c for c in COMMANDS for n in (c.name,) + c.aliases}


def parse(line: str) -> Tuple[Optional[Command], str, bool]:
    """(command, its argument, looks like a command).  A line such as "/usr/bin is a path"
    is no command and goes out as a message; "/frobnicate" is an unknown command."""
    name, _, arg = line.strip().partition(" ")
    cmd = _BY_NAME.get(name)
    return cmd, arg.strip(), cmd is not None or re.fullmatch(r"/[a-z]+", name) is not None


def help_rows():
    """(usage, help) for the help screen."""
    return [(c.usage, c.help) for c in COMMANDS]
