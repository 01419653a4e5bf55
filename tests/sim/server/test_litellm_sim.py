"""Beyond one machine: a LiteLLM proxy in front of two `tpuchat serve` processes (on the simulator),
both deployments of one model name.  Requests go through the official openai client to the
proxy; one server is killed in the middle and every later request is answered by the other.

The proxy comes with the `router` extra (`pip install 'tpuchat[router]'`, Python 3.10+); the test
is skipped when its `litellm` command is not installed (set TPUCHAT_LITELLM to its path to use
one from another venv)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_serve_sim import KEY, start_server, stop_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.timeout(1800)  # three servers and a proxy on the simulator's CPU

PROXY_KEY = "sk-proxy-test"
GROUP = "tiny-chat"  # the model name clients ask the proxy for
PROXY_START_S = 240  # the proxy imports a lot: ~45 s on a loaded 2-core machine


def litellm_command():
    exe = os.environ.get("TPUCHAT_LITELLM") or shutil.which(
        "litellm", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not exe:
        pytest.skip("the LiteLLM proxy is not installed: pip install 'tpuchat[router]' (or set TPUCHAT_LITELLM)")
    return exe


def litellm_config(model_id: str, urls, health_check_interval: int = 20) -> str:
    """The config.yaml the README shows: each tpuchat server a deployment of one model name."""
    deployments = "".join(f"""  - model_name: {GROUP}
    litellm_params:
      model: openai/{model_id}          # an OpenAI-compatible server serving this model id
      api_base: {url}
      api_key: os.environ/TPUCHAT_API_KEY
    model_info:
      health_check_max_tokens: 1       # the health probe is a real (one-token) completion
""" for url in urls)
    return f"""model_list:
{deployments}
router_settings:
  routing_strategy: least-busy
  num_retries: 2          # a failed call is retried on another deployment
  allowed_fails: 0        # one failure puts a deployment in cooldown ...
  cooldown_time: 120      # ... for this long
  retry_after: 0
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  background_health_checks: true
  health_check_interval: {health_check_interval}
litellm_settings:
  request_timeout: 600
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(exe, config: Path, log: Path):
    port = free_port()
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=PROXY_KEY,
               TPUCHAT_API_KEY=KEY, LITELLM_TELEMETRY="False", NO_PROXY="127.0.0.1,localhost")
    with open(log, "wb") as f:
        proc = subprocess.Popen([exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + PROXY_START_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).read()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    proc.wait()
    pytest.fail("the LiteLLM proxy did not start:\n" + log.read_text()[-3000:])


def test_litellm_proxy_fails_over_to_the_other_server(sim_lib, tmp_path):
    from tests.fixtures import models
    from tpuchat.text import load_tokenizer

    exe = litellm_command()
    bmodel = models.bmodel_path("demo")
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(start_server(bmodel, sim_lib, tmp_path / name))
    proxy = None
    workers = []
    try:
        model_id = servers[0].client().models.list().data[0].id
        workers = [e["pid"] for s in servers for e in s.health()["engines"]]
        config = tmp_path / "config.yaml"
        # Probes every 60 s here: on the simulator a one-token probe takes seconds of a shared CPU.
        config.write_text(litellm_config(model_id, [s.url for s in servers], health_check_interval=60))
        proxy, port = start_proxy(exe, config, tmp_path / "proxy.log")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=PROXY_KEY, max_retries=0,
                               timeout=600)
        tok = load_tokenizer(models.tokenizer_dir("demo"))
        texts = [f"question {i}" for i in range(3)] + [f"after the kill {i}" for i in range(4)]
        prompts = [tok.encode_chat([{"role": "user", "content": t}]) for t in texts]
        want = dict(zip(texts, models.reference_greedy("demo", prompts, 2)))  # one transformers run

        def ask(text):
            msgs = [{"role": "user", "content": text}]
            raw = client.chat.completions.with_raw_response.create(model=GROUP, messages=msgs, max_tokens=2)
            r = raw.parse()
            assert r.choices[0].message.content == tok.decode(want[text])  # the model's answer, exactly
            return raw.headers.get("x-litellm-model-api-base")

        before = [ask(t) for t in texts[:3]]
        assert set(before) <= {s.url for s in servers}
        # Kill the server that answered last, the hard way, in the middle of the session.
        victim = next(s for s in servers if s.url == before[-1])
        other = next(s for s in servers if s is not victim)
        served_before = other.health()["served"]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(30)
        after = [ask(t) for t in texts[3:]]
        assert after == [other.url] * 4
        assert other.health()["served"] >= served_before + 4  # and the proxy's health probes
    finally:
        if proxy is not None:
            proxy.terminate()
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                proxy.kill()
        for s in servers:
            if s.proc.poll() is None:
                stop_server(s)
        for pid in workers:  # the killed server's engine worker, if it outlived it
            try:
                if b"tpuchat.runtime.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
