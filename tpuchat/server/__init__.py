"""OpenAI-compatible HTTP API (`tpuchat serve`): see http.py for the stack, scheduler.py for the
queue and cancelling, protocol.py for the wire format and the parameter rules."""

from .http import ApiServer, check_bind, make_server, serve

__all__ = ["ApiServer", "check_bind", "make_server", "serve"]
