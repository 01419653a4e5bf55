"""`tpuchat serve` refuses a public address without an API key (no model is opened)."""

import os
import subprocess
import sys


def test_refuses_public_bind_without_key():
    p = subprocess.run([sys.executable, "-m", "tpuchat.cli", "serve", "--model", "/nonexistent.bmodel",
                        "--host", "0.0.0.0"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "TPUCHAT_API_KEY"}, timeout=60)
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in p.stderr
    assert "--insecure" in p.stderr
    # with --insecure (or a key) the bind check passes and the next problem is the missing model
    for extra, env in ((["--insecure"], {}), ([], {"TPUCHAT_API_KEY": "k"})):
        p = subprocess.run([sys.executable, "-m", "tpuchat.cli", "serve", "--model", "/nonexistent.bmodel",
                            "--host", "0.0.0.0", "--port", "0", *extra], capture_output=True, text=True,
                           env=dict(os.environ, **env), timeout=60)
        assert p.returncode == 4 and "refusing" not in p.stderr, p.stderr
