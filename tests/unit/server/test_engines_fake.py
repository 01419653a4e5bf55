"""Several engines behind one server, with scripted engines (no device): routing to idle engines,
prefix affinity, the shared queue, crash isolation; /metrics, /v1/info and /v1/completions."""

import http.client
import json
import threading
import time

import pytest

from tpuchat.errors import EngineCrashed

from .fakes import FakeModel

openai = pytest.importorskip("openai")
parser = pytest.importorskip("prometheus_client.parser")

MODEL = "fake-model"


def user(text):
    return [{"role": "user", "content": text}]


def ask(s, messages, results, key, **kw):
    try:
        results[key] = s.client().chat.completions.create(model=MODEL, messages=messages, **kw)
    except Exception as e:  # noqa: BLE001 - the test looks at it
        results[key] = e


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def engine_of(models, text):
    """Index of the engine whose generations include a prompt containing `text`."""
    ids = [ord(c) for c in text]
    hits = [i for i, m in enumerate(models) for c in m.calls
            if any(c["ids"][k:k + len(ids)] == ids for k in range(len(c["ids"])))]
    assert len(hits) >= 1, text
    return hits[-1]


def test_two_engines_answer_two_requests_at_once(serve_fake):
    models = [FakeModel(token_s=0.1), FakeModel(token_s=0.1)]
    s = serve_fake(models, labels=["0", "1"])
    results = {}
    threads = [threading.Thread(target=ask, args=(s, user(q), results, q), kwargs={"max_tokens": 8})
               for q in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.choices[0].message.content for r in results.values()] == ["Hello, world! How are you"] * 2
    assert [len(m.calls) for m in models] == [1, 1]
    a, b = models[0].calls[0], models[1].calls[0]
    assert a["started"] < b["ended"] and b["started"] < a["ended"]  # they overlapped
    # neither waited for the other (that would be ~0.8 s)
    assert all(r.model_extra["tpuchat"]["queue_s"] < 0.4 for r in results.values())
    _, _, health = s.raw("GET", "/health")
    assert [e["devices"] for e in health["engines"]] == ["0", "1"]
    assert [e["served"] for e in health["engines"]] == [1, 1] and health["served"] == 2


def test_follow_up_goes_to_the_engine_holding_its_conversation(serve_fake):
    models = [FakeModel(token_s=0.02), FakeModel(token_s=0.02)]
    s = serve_fake(models)
    convs = {"x": user("tell me about the sea"), "y": user("tell me about the mountains")}
    # Both at once: each engine takes one conversation.
    results = {}
    threads = [threading.Thread(target=ask, args=(s, convs[k], results, k), kwargs={"max_tokens": 3})
               for k in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    home = {k: engine_of(models, convs[k][0]["content"]) for k in convs}
    assert sorted(home.values()) == [0, 1]
    # Follow-ups, one at a time (both engines idle): each goes home, whichever engine the tie-break
    # (least served, then lowest index) would have picked.  y first: it lives on the engine that
    # a tie-break would not pick if both had served the same.
    for k in ("y", "x", "y", "x"):
        before = [len(m.calls) for m in models]
        msgs = convs[k] + [{"role": "assistant", "content": results[k].choices[0].message.content},
                           {"role": "user", "content": "and then?"}]
        r = s.client().chat.completions.create(model=MODEL, messages=msgs, max_tokens=3)
        after = [len(m.calls) for m in models]
        assert after[home[k]] == before[home[k]] + 1, (k, before, after)
        convs[k], results[k] = msgs, r


def test_new_conversations_spread_over_idle_engines(serve_fake):
    """With no shared prefix the idle engine that served least takes the request."""
    models = [FakeModel(token_s=0.001), FakeModel(token_s=0.001), FakeModel(token_s=0.001)]
    s = serve_fake(models)
    c = s.client()
    for i in range(6):
        c.chat.completions.create(model=MODEL, messages=user(f"{i} unrelated"), max_tokens=2)
    assert [len(m.calls) for m in models] == [2, 2, 2]


def test_all_engines_busy_requests_queue_then_429(serve_fake):
    gate = threading.Event()
    models = [FakeModel(token_s=0.05), FakeModel(token_s=0.05)]
    for m in models:
        m.gate = gate  # both engines stay busy until the 429 is seen
    s = serve_fake(models, max_waiting=1)
    results = {}
    threads = []
    for i in range(3):  # two run, one waits
        t = threading.Thread(target=ask, args=(s, user(f"q{i}"), results, i), kwargs={"max_tokens": 6})
        t.start()
        threads.append(t)
        wait_for(lambda: sum(len(m.calls) for m in models) + s.srv.scheduler.status()["waiting"] == i + 1)
    with pytest.raises(openai.RateLimitError) as exc:
        s.client().chat.completions.create(model=MODEL, messages=user("one too many"), max_tokens=1)
    assert exc.value.status_code == 429
    time.sleep(0.5)
    gate.set()
    for t in threads:
        t.join(30)
    assert all(not isinstance(r, Exception) for r in results.values())
    assert results[2].model_extra["tpuchat"]["queue_s"] > 0.5  # waited for an engine


def test_crashed_engine_fails_only_its_request_and_restarts(serve_fake):
    bad = FakeModel(token_s=0.05, fail=EngineCrashed("the engine process was killed by SIGKILL"))
    bad.restart_s, bad.restart_fails = 1.0, 1  # the first restart fails: the engine stays out a while
    good = FakeModel(token_s=0.05)
    s = serve_fake([bad, good])
    results = {}
    threads = [threading.Thread(target=ask, args=(s, user(q), results, q), kwargs={"max_tokens": 5})
               for q in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    answers = [r for r in results.values() if not isinstance(r, Exception)]
    assert len(errors) == 1 and len(answers) == 1
    assert isinstance(errors[0], openai.InternalServerError) and errors[0].code == "engine_crashed"
    assert answers[0].choices[0].message.content == "Hello, world!"
    # While the crashed engine restarts, the other one answers everything.
    states = [e["state"] for e in s.srv.scheduler.status()["engines"]]
    assert states[0] == "restarting"
    c = s.client()
    for i in range(3):
        r = c.chat.completions.create(model=MODEL, messages=user(f"during restart {i}"), max_tokens=2)
        assert r.choices[0].message.content == "Hello,"
    wait_for(lambda: s.srv.scheduler.status()["engines"][0]["state"] == "idle", 15)
    assert bad.restarts == 2  # one failed, one succeeded
    # Back in service: two at once use both engines again.
    n_bad = len(bad.calls)
    threads = [threading.Thread(target=ask, args=(s, user(q), results, q), kwargs={"max_tokens": 5})
               for q in ("c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not isinstance(results["c"], Exception) and not isinstance(results["d"], Exception)
    assert len(bad.calls) == n_bad + 1
    _, _, health = s.raw("GET", "/health")
    assert health["engines"][0]["restarts"] == 2 and health["failed"] == 1


def test_disconnect_cancels_on_its_own_engine(serve_fake):
    models = [FakeModel(token_s=0.05), FakeModel(token_s=0.05)]
    s = serve_fake(models)
    results = {}
    keep = threading.Thread(target=ask, args=(s, user("keep"), results, "keep"), kwargs={"max_tokens": 20})
    keep.start()
    wait_for(lambda: sum(len(m.calls) for m in models) == 1)
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps({"messages": user("drop"), "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.readline()
    wait_for(lambda: sum(len(m.calls) for m in models) == 2)
    dropped = engine_of(models, "drop")
    conn.sock.close()
    conn.close()
    wait_for(lambda: models[dropped].calls[-1]["stop_reason"] == "cancelled")
    keep.join(30)
    assert results["keep"].choices[0].finish_reason == "length"
    assert models[1 - dropped].calls[-1]["stop_reason"] == "max_tokens"
    assert models[1 - dropped].cancels == 0


# -- endpoints -------------------------------------------------------------------------------------


def test_metrics_parse_and_add_up(serve_fake):
    models = [FakeModel(token_s=0.01), FakeModel(token_s=0.01)]
    s = serve_fake(models)
    c = s.client()
    # The same prompt twice: the second goes to the engine holding it and reuses its KV rows (the
    # fake reports reuse in its stats as the real engine does).
    answers = [c.chat.completions.create(model=MODEL, messages=user("sea"), max_tokens=n) for n in (2, 3)]
    n_prompt = answers[0].usage.prompt_tokens
    c.completions.create(model=MODEL, prompt="raw text", max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=user("x"), n=2)
    status, headers, text = s.raw("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}

    def value(name, suffix="", **labels):
        got = [x.value for x in fams[name].samples
               if x.name == name + suffix and all(x.labels.get(k) == v for k, v in labels.items())]
        assert len(got) == 1, (name, labels, fams[name].samples)
        return got[0]

    assert fams["tpuchat_requests"].type == "counter"
    assert value("tpuchat_requests", "_total", endpoint="/chat/completions", status="200") == 2
    assert value("tpuchat_requests", "_total", endpoint="/chat/completions", status="400") == 1
    assert value("tpuchat_requests", "_total", endpoint="/completions", status="200") == 1
    assert value("tpuchat_generated_tokens", "_total") == 2 + 3 + 4
    prompts = sum(len(m["ids"]) for mod in models for m in mod.calls)
    assert value("tpuchat_prompt_tokens", "_total") == prompts
    assert value("tpuchat_kv_reuse_hits", "_total") == 1
    assert value("tpuchat_kv_reused_tokens", "_total") == n_prompt - 1
    assert fams["tpuchat_first_token_seconds"].type == "histogram"
    assert value("tpuchat_first_token_seconds", "_count") == 3
    assert value("tpuchat_token_seconds", "_bucket", le="+Inf") == 3
    assert value("tpuchat_queue_wait_seconds", "_count") == 3
    assert value("tpuchat_engines", state="idle") == 2 and value("tpuchat_engines", state="busy") == 0
    assert value("tpuchat_queue_depth") == 0
    busy = [value("tpuchat_engine_busy_seconds", "_total", engine=str(i)) for i in range(2)]
    assert all(b > 0 for b in busy)
    assert answers[1].usage.completion_tokens == 3


def test_metrics_and_info_need_the_key_when_one_is_set(serve_fake):
    s = serve_fake(api_key="k")
    assert s.raw("GET", "/metrics")[0] == 401
    assert s.raw("GET", "/v1/info")[0] == 401
    status, _, info = s.raw("GET", "/v1/info", headers={"Authorization": "Bearer k"})
    assert status == 200
    assert info["id"] == MODEL and info["model"]["kv_len"] == 256 and info["model"]["seq_len"] == 200
    assert info["can_sample"] is False and info["engines"] == [{"devices": "0", "state": "idle"}]


def test_completions_with_official_client(serve_fake):
    s = serve_fake()
    c = s.client()
    r = c.completions.create(model=MODEL, prompt="Once upon", max_tokens=3)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == "Hello, wor" and r.choices[0].finish_reason == "length"
    assert s.model.calls[-1]["ids"] == [ord(ch) for ch in "Once upon"]  # no chat template
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len("Once upon"), 3)
    # streamed: the same text in pieces, then the finish reason, then usage
    chunks = list(c.completions.create(model=MODEL, prompt="Once upon", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Hello, wor"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3
    # OpenAI's default length for this endpoint
    c.completions.create(model=MODEL, prompt="x")
    assert s.model.calls[-1]["settings"].max_new_tokens == 16
    with pytest.raises(openai.BadRequestError) as exc:
        c.completions.create(model=MODEL, prompt="x", echo=True)
    assert "echo" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        c.completions.create(model=MODEL, prompt=["a", "b"])
    assert "one prompt" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        c.completions.create(model=MODEL, prompt="y" * 300)
    assert exc.value.code == "context_length_exceeded" and "your prompt has 300 tokens" in str(exc.value)
