"""`tpuchat serve --devid 0 --devid 0`: two engine processes on the BM1684X simulator (each has its
own C model of the chip), answering at once and exactly (transformers' tokens), and a killed
engine failing only its own request."""

import http.client
import os
import signal
import threading
import time

import pytest

from .test_serve_sim import KEY, start_server, stop_server

openai = pytest.importorskip("openai")

N = 4  # tokens per answer: the simulator takes ~0.5 s a token


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def two(sim_lib, tmp_path_factory):
    from tests.fixtures import models

    srv = start_server(models.bmodel_path("demo"), sim_lib, tmp_path_factory.mktemp("serve2"),
                       "--devid", "0", "--devid", "0")
    yield srv
    stop_server(srv)
    assert srv.proc.returncode == 0, srv.log.read_text()[-2000:]


def references(texts, n):
    """{text: (prompt ids, transformers' n greedy ids)} for one-message chats, in one reference run."""
    from tests.fixtures import models
    from tpuchat.text import load_tokenizer

    tok = load_tokenizer(models.tokenizer_dir("demo"))
    ids = [tok.encode_chat([{"role": "user", "content": t}]) for t in texts]
    return dict(zip(texts, zip(ids, models.reference_greedy("demo", ids, n))))


def test_two_engines_answer_at_once_and_exactly(two):
    c = two.client()
    model = c.models.list().data[0].id
    health = two.health()
    assert [e["state"] for e in health["engines"]] == ["idle", "idle"]
    pids = [e["pid"] for e in health["engines"]]
    assert len(set(pids)) == 2
    print("\nengine worker RSS (MB): " + ", ".join(f"{rss_mb(p):.0f}" for p in pids))

    questions = {"a": [{"role": "user", "content": "Tell me about the sea."}],
                 "b": [{"role": "user", "content": "What is a mountain?"}]}
    refs = references([q[0]["content"] for q in questions.values()], N)
    got = {}

    def ask(k):
        t0 = time.monotonic()
        r = c.chat.completions.create(model=model, messages=questions[k], max_tokens=N,
                                      extra_body={"return_token_ids": True})
        got[k] = (t0, time.monotonic(), r)

    threads = [threading.Thread(target=ask, args=(k,)) for k in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert set(got) == set(questions)
    (a0, a1, ra), (b0, b1, rb) = got["a"], got["b"]
    assert a0 < b1 and b0 < a1
    assert {ra.model_extra["tpuchat"]["engine"], rb.model_extra["tpuchat"]["engine"]} == {0, 1}
    for k, (_, _, r) in got.items():
        t = r.model_extra["tpuchat"]
        # Neither waited for the other: each started as soon as it arrived.
        assert t["queue_s"] < 1.0, t
        ids, want = refs[questions[k][0]["content"]]
        assert r.usage.prompt_tokens == len(ids)
        assert t["token_ids"] == want
    assert [e["served"] for e in two.health()["engines"]] == [1, 1]


def test_killed_engine_fails_its_request_only_and_comes_back(two):
    c = two.client()
    model = c.models.list().data[0].id
    before = two.health()
    refs = references(["survivor", "again one", "again two"], 2)
    got = {}

    def ask(k, n):
        try:
            got[k] = c.chat.completions.create(model=model, messages=[{"role": "user", "content": k}], max_tokens=n,
                                               extra_body={"return_token_ids": True})
        except Exception as e:  # noqa: BLE001 - looked at below
            got[k] = e

    victim = threading.Thread(target=ask, args=("victim", 40))
    victim.start()
    deadline = time.monotonic() + 120
    while "busy" not in [e["state"] for e in two.health()["engines"]]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    busy = [i for i, e in enumerate(two.health()["engines"]) if e["state"] == "busy"][0]
    survivor = threading.Thread(target=ask, args=("survivor", 2))
    survivor.start()
    time.sleep(1.0)
    os.kill(before["engines"][busy]["pid"], signal.SIGKILL)
    victim.join(900)
    survivor.join(900)
    assert isinstance(got["victim"], openai.InternalServerError) and got["victim"].code == "engine_crashed"
    assert "SIGKILL" in str(got["victim"])
    r = got["survivor"]
    assert not isinstance(r, Exception), r
    assert r.model_extra["tpuchat"]["token_ids"] == refs["survivor"][1]
    assert r.model_extra["tpuchat"]["engine"] == 1 - busy
    # The killed engine restarts (a new worker process) and answers exactly again.
    deadline = time.monotonic() + 300
    while two.health()["engines"][busy]["state"] != "idle":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    h = two.health()
    assert h["engines"][busy]["restarts"] == 1 and h["engines"][busy]["pid"] != before["engines"][busy]["pid"]
    assert h["failed"] == before["failed"] + 1
    got.clear()
    threads = [threading.Thread(target=ask, args=(k, 2)) for k in ("again one", "again two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert {got[k].model_extra["tpuchat"]["engine"] for k in got} == {0, 1}
    for k in got:
        assert got[k].model_extra["tpuchat"]["token_ids"] == refs[k][1]


def test_raw_completion_exact_and_metrics(two):
    """/v1/completions on the device path: the raw prompt's ids, no template; /metrics adds up."""
    from prometheus_client.parser import text_string_to_metric_families
    from tests.fixtures import models
    from tpuchat.text import load_tokenizer

    c = two.client()
    model = c.models.list().data[0].id
    r = c.completions.create(model=model, prompt="Once upon a time", max_tokens=3,
                             extra_body={"return_token_ids": True})
    ids = load_tokenizer(models.tokenizer_dir("demo")).encode("Once upon a time")
    assert r.usage.prompt_tokens == len(ids)
    assert r.model_extra["tpuchat"]["token_ids"] == models.reference_greedy("demo", [ids], 3)[0]
    conn = http.client.HTTPConnection(two.host, two.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + KEY})
    text = conn.getresponse().read().decode()
    conn.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("tpuchat_requests_total", (("endpoint", "/completions"), ("status", "200")))] == 1
    assert samples[("tpuchat_engines", (("state", "idle"),))] == 2
    assert samples[("tpuchat_generated_tokens_total", ())] >= 3
    assert samples[("tpuchat_first_token_seconds_count", ())] >= 1
