"""What textual-serve runs per browser tab: the chat UI, always full-screen
(textual-serve provides the terminal), even for a model that fails to open."""

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tpuchat-web-session")
    ap.add_argument("--model")
    ap.add_argument("--devid", default="0")
    ap.add_argument("--tokenizer")
    ap.add_argument("--libsophon")
    a = ap.parse_args(argv)
    from ..options import parse_devids
    from . import run_tui

    return run_tui(a.model, parse_devids(a.devid), a.libsophon, a.tokenizer)


if __name__ == "__main__":
    sys.exit(main())
