"""`tpuchat serve` as a subprocess on the tiny demo bmodel, on the BM1684X simulator, driven by the
official openai client.  Generations are kept to a few tokens: the simulator takes ~0.5 s a token."""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "Hello!"}]


class Server:
    def __init__(self, proc, url, log):
        self.proc, self.url, self.log = proc, url, log
        m = re.match(r"http://([\d.]+):(\d+)/v1", url)
        self.host, self.port = m.group(1), int(m.group(2))

    def client(self, **kw):
        kw.setdefault("api_key", KEY)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 600)
        return openai.OpenAI(base_url=self.url, **kw)

    def health(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body


def start_server(model, lib, tmp, *args, env_key=KEY):
    log = Path(tmp) / "serve.log"
    env = dict(os.environ, TPUCHAT_API_KEY=env_key)
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tpuchat.cli", "serve", "--model", str(model),
                                 "--libsophon", lib, "--port", "0", *args],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://\S+/v1)", log.read_text())
        if m:
            return Server(proc, m.group(1), log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail("tpuchat serve did not start:\n" + log.read_text())


def stop_server(srv):
    srv.proc.terminate()
    try:
        srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        srv.proc.kill()


@pytest.fixture(scope="module")
def server(sim_lib, tmp_path_factory):
    from tests.fixtures import models

    srv = start_server(models.bmodel_path("demo"), sim_lib, tmp_path_factory.mktemp("serve"))
    yield srv
    stop_server(srv)
    assert srv.proc.returncode == 0, srv.log.read_text()[-2000:]


def test_models_and_auth_from_env(server):
    assert server.client().models.list().data[0].id.startswith("qwen2-tiny")
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()


def test_answer_streamed_and_not(server):
    c = server.client()
    model = c.models.list().data[0].id
    r = c.chat.completions.create(model=model, messages=HELLO, max_tokens=3)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    t = r.model_extra["tpuchat"]
    assert t["ftl_s"] > 0 and t["tokens_per_s"] > 0 and t["stop_reason"] == "max_tokens"

    print("\n--- streamed transcript (official openai client) ---")
    stream = c.chat.completions.create(model=model, messages=HELLO, max_tokens=3, stream=True,
                                       stream_options={"include_usage": True})
    chunks = []
    for ch in stream:
        chunks.append(ch)
        print(ch.model_dump_json(exclude_none=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text  # greedy: the same answer either way
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_two_concurrent_clients_answered_in_order(server):
    c = server.client()
    model = c.models.list().data[0].id
    before = server.health()["served"]
    done = {}

    def ask(name):
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": name}], max_tokens=2)
        done[name] = (time.monotonic(), r)

    a = threading.Thread(target=ask, args=("first question",))
    a.start()
    deadline = time.monotonic() + 60
    while not server.health()["busy"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    b = threading.Thread(target=ask, args=("second question",))
    b.start()
    a.join(600)
    b.join(600)
    assert set(done) == {"first question", "second question"}
    (ta, ra), (tb, rb) = done["first question"], done["second question"]
    assert ta < tb
    assert ra.choices[0].message.content and rb.choices[0].message.content
    assert rb.model_extra["tpuchat"]["queue_s"] > 0.5  # it waited for the first
    assert server.health()["served"] == before + 2


def test_disconnect_mid_stream_cancels_and_next_starts_at_once(server):
    model = server.client().models.list().data[0].id
    before = server.health()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    conn.request("POST", "/v1/chat/completions",
                 json.dumps({"model": model, "messages": HELLO, "max_tokens": 100, "stream": True}),
                 {"Content-Type": "application/json", "Authorization": "Bearer " + KEY})
    resp = conn.getresponse()
    assert resp.status == 200
    # Read two content chunks to learn the time per token.
    stamps = []
    while len(stamps) < 2:
        line = resp.readline().decode()
        if line.startswith("data: {") and '"content": "' in line and '"role"' not in line:
            stamps.append(time.monotonic())
    interval = stamps[1] - stamps[0]

    result = {}

    def ask_next():
        t_sent = time.monotonic()
        r = server.client().chat.completions.create(model=model, messages=HELLO, max_tokens=1)
        result.update(t_sent=t_sent, r=r)

    nxt = threading.Thread(target=ask_next)
    nxt.start()
    deadline = time.monotonic() + 30
    while server.health()["waiting"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t_sent_upper = time.monotonic()
    t_close = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    nxt.join(600)
    r = result["r"]
    queue_s = r.model_extra["tpuchat"]["queue_s"]
    # The next request reached the server between t_sent and t_sent_upper, so it started at most
    # this long after the disconnect (the engine stops within the decode step in flight).
    start_after_close = queue_s - (t_close - t_sent_upper)
    print(f"\ntoken interval {interval:.2f} s; next request started at most {start_after_close:.2f} s "
          "after the disconnect")
    assert start_after_close < interval * 2 + 1.0
    after = server.health()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["served"] == before["served"] + 1


def test_sampling_build_accepts_temperature(sim_lib, tmp_path):
    from tests.fixtures import models

    srv = start_server(models.bmodel_path("qwen2-sample"), sim_lib, tmp_path)
    try:
        c = srv.client()
        model = c.models.list().data[0].id
        r = c.chat.completions.create(model=model, messages=HELLO, max_tokens=2, temperature=0.8, top_p=0.9,
                                      seed=7)
        assert r.model_extra["tpuchat"]["sampling"] == "sampled"
        assert r.usage.completion_tokens == 2
    finally:
        stop_server(srv)
