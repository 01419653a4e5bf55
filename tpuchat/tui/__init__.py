"""The Textual chat UI (`tpuchat --model M`, `tpuchat chat`, `tpuchat web`).

Over SSH the frame rate is lowered and animations are turned off; Textual
reads these settings when it is imported, so they are set here, before any
textual import in this package.
"""

import os


def over_ssh() -> bool:
    return bool(os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY") or os.environ.get("SSH_CLIENT"))


def _tune_for_ssh() -> None:
    if over_ssh():
        os.environ.setdefault("TEXTUAL_FPS", "15")
        os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


_tune_for_ssh()


def run_tui(model=None, devids=(0,), lib_dir=None, tokenizer_dir=None, max_new_tokens=None, system=None,
            shared_prefix: bool = False) -> int:
    """Open the chat UI; returns the exit code.  shared_prefix: `system` is
    a shared document whose KV rows are computed once per model."""
    from .app import TpuchatApp
    from .backend import Backend

    backend = Backend(lib_dir, tokenizer_dir, shared_prefix=system if shared_prefix else None)
    app = TpuchatApp(backend=backend, model_path=model, devids=list(devids),
                     max_new_tokens=max_new_tokens, system=system)
    app.run()
    return app.return_code or 0
