"""`tpuchat web`: the chat UI in a browser, served by textual-serve.

textual-serve starts one `tpuchat chat` process per browser tab in a
pseudo-terminal and relays it over a websocket; nothing else is exposed.
"""

import shlex
import sys
from typing import Optional

from ..errors import TpuchatError


def chat_command(model: Optional[str], devid: str, tokenizer: Optional[str], libsophon: Optional[str]) -> str:
    """The command line textual-serve runs for each browser session."""
    args = [sys.executable, "-m", "tpuchat.tui.serve_entry", "--devid", devid]
    if model:
        args += ["--model", model]
    if tokenizer:
        args += ["--tokenizer", tokenizer]
    if libsophon:
        args += ["--libsophon", libsophon]
    return " ".join(shlex.quote(a) for a in args)


def serve(model: Optional[str], devid: str, tokenizer: Optional[str], libsophon: Optional[str], host: str,
          port: int, public_url: Optional[str] = None) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        raise TpuchatError("the browser view needs textual-serve: pip install textual-serve") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"tpuchat: warning: serving the chat UI on {host}: anyone who can reach this port "
                         "can use the model and read the saved conversations\n")
    server = Server(chat_command(model, devid, tokenizer, libsophon), host=host, port=port,
                    title="tpuchat", public_url=public_url)
    server.serve()
    return 0
