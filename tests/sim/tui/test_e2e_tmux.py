"""End to end on the simulator: `tpuchat --model <demo bmodel>` in a real terminal (tmux).

Type a message, wait for the streamed answer and its stats, stop a second
answer with Esc, quit, start again and find the conversation in the list.
Run it alone on the simulator: flock /tmp/tpuchat-sim.lock pytest tests/sim/tui/test_e2e_tmux.py
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Tmux:
    def __init__(self, tmp: Path, width: int = 100, height: int = 30):
        self.sock = "tpuchat-" + uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.width, self.height = width, height
        self.session = None

    def _tmux(self, *args, check=True) -> str:
        r = subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, check=check)
        return r.stdout

    def start(self, argv, env: dict) -> None:
        self.session = "s" + uuid.uuid4().hex[:6]
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        cmd = f"env {exports} {' '.join(shlex.quote(a) for a in argv)}; echo TPUCHAT-EXIT=$?; sleep 600"
        self._tmux("new-session", "-d", "-s", self.session, "-x", str(self.width), "-y", str(self.height), cmd)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session, check=False)

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", self.session, "-l", text)

    def wait(self, cond, timeout: float, what: str) -> str:
        end = time.time() + timeout
        s = ""
        while time.time() < end:
            s = self.screen()
            if cond(s):
                return s
            if "TPUCHAT-EXIT=" in s and "TPUCHAT-EXIT" not in what:
                break
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{s}")

    def kill(self) -> None:
        self._tmux("kill-server", check=False)


@pytest.fixture
def demo_bmodel():
    from tests.fixtures import models

    models.variant_dir("demo")
    return str(models.bmodel_path("demo"))


def status_line(screen: str) -> str:
    lines = [line for line in screen.splitlines() if "│" in line and ("idle" in line or "generating" in line
                                                                      or "prefill" in line or "loading" in line)]
    return lines[-1] if lines else ""


def test_chat_in_tmux(tmp_path, demo_bmodel, sim_lib):
    from tpuchat.store import Store

    env = {
        "TPUCHAT_DATA": str(tmp_path / "data"),
        "TPUCHAT_CONFIG": str(tmp_path / "config.toml"),
        "TPUCHAT_STATE": str(tmp_path / "state"),
        "TERM": "xterm-256color",
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
    }
    # Short answers by default (from the settings file), so the test stays quick on the simulator.
    (tmp_path / "config.toml").write_text("[generation]\nmax_new_tokens = 6\n")
    argv = [sys.executable, "-m", "tpuchat.cli", "--model", demo_bmodel, "--libsophon", sim_lib]
    name = Path(demo_bmodel).name
    t = Tmux(tmp_path)
    try:
        t.start(argv, env)
        t.wait(lambda s: "idle" in status_line(s) and name[:20] in s, 120, "the model to load")

        # 1. a message, its streamed answer and stats
        t.type("hello there")
        t.keys("Enter")
        t.wait(lambda s: "prefill" in status_line(s) or "generating" in status_line(s), 30, "generation to start")
        s = t.wait(lambda s: "idle" in status_line(s) and "tok/s" in s and "tokens" in s, 180, "the answer")
        assert "FTL" in status_line(s) and "tok/s" in status_line(s)
        assert "hello there" in s

        # 2. a long answer, stopped with Esc
        t.type("/set max_new_tokens=200")
        t.keys("Enter")
        time.sleep(0.5)
        t.type("tell me more")
        t.keys("Enter")
        t.wait(lambda s: "generating" in status_line(s), 120, "the second answer to stream")
        time.sleep(2.0)
        t.keys("Escape")
        s = t.wait(lambda s: "idle" in status_line(s) and "stopped" in s, 60, "the answer to stop")

        # 3. quit
        t.keys("C-q")
        t.wait(lambda s: "TPUCHAT-EXIT=0" in s, 30, "TPUCHAT-EXIT=0 (tpuchat to exit)")

        store = Store(tmp_path / "data" / "chats.db")
        convs = store.list_conversations()
        assert len(convs) == 1 and convs[0].title == "hello there"
        msgs = store.messages(convs[0].id)
        assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
        assert (msgs[1].stats.new_tokens or 0) >= 1 and msgs[1].stats.tokens_per_s is not None
        assert msgs[1].model == name
        assert msgs[3].stopped and msgs[3].stats.stop_reason == "cancelled"
        assert msgs[3].stats.new_tokens < 200
        store.close()

        # 4. restart and find the conversation again
        t.kill()
        t = Tmux(tmp_path)
        t.start(argv, env)
        t.wait(lambda s: "idle" in status_line(s), 120, "the model to load again")
        t.keys("C-b")
        t.wait(lambda s: "Conversations" in s and "hello there" in s, 20, "the conversation list")
        t.keys("Enter")
        s = t.wait(lambda s: "tell me more" in s and "stopped" in s, 20, "the conversation to open")
        t.keys("C-q")
        t.wait(lambda s: "TPUCHAT-EXIT=0" in s, 30, "TPUCHAT-EXIT=0 (tpuchat to exit)")
    finally:
        t.kill()
