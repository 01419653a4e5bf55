"""The HTTP API against a scripted model (no device): wire format, errors, auth, queue, cancel."""

import http.client
import json
import socket
import threading
import time

import pytest

from tpuchat.errors import EngineCrashed

from .fakes import FakeModel

openai = pytest.importorskip("openai")

MSG = [{"role": "user", "content": "Hi"}]
MODEL = "fake-model"


def sse_events(raw: str):
    return [line[len("data: "):] for line in raw.split("\n") if line.startswith("data: ")]


# -- happy paths ----------------------------------------------------------------------------------


def test_models_and_health(serve_fake):
    s = serve_fake()
    c = s.client()
    assert [m.id for m in c.models.list().data] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL
    status, _, body = s.raw("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["busy"] is False


def test_non_streaming_answer_usage_and_timings(serve_fake):
    s = serve_fake(FakeModel(eos_after=3))
    r = s.client().chat.completions.create(model=MODEL, messages=MSG)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Hello, wor"
    assert r.choices[0].finish_reason == "stop"  # eos
    prompt = len(s.model.tok.encode_chat(MSG))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (prompt, 3, prompt + 3)
    t = r.model_extra["tpuchat"]
    assert {"ftl_s", "tokens_per_s", "queue_s", "stop_reason", "sampling"} <= set(t)
    assert t["sampling"] == "greedy" and t["stop_reason"] == "eos"


def test_max_tokens_gives_length(serve_fake):
    s = serve_fake()
    r = s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
    assert r.choices[0].message.content == "Hello,"
    assert r.choices[0].finish_reason == "length"
    assert s.model.calls[-1]["settings"].max_new_tokens == 2
    # max_completion_tokens is the newer name
    r = s.client().chat.completions.create(model=MODEL, messages=MSG, max_completion_tokens=1)
    assert r.choices[0].message.content == "Hello"


def test_max_tokens_default_is_rest_of_context(serve_fake):
    s = serve_fake(FakeModel(eos_after=1, seq_len=200, kv_len=256))
    s.client().chat.completions.create(model=MODEL, messages=MSG)
    n = len(s.model.calls[-1]["ids"])
    assert s.model.calls[-1]["settings"].max_new_tokens == 256 - n


def test_streaming_with_official_client(serve_fake):
    s = serve_fake()
    stream = s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, stream=True,
                                                stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert "tokens_per_s" in finals[0].model_extra["tpuchat"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_streaming_wire_format(serve_fake):
    s = serve_fake()
    status, headers, raw = s.raw("POST", "/v1/chat/completions",
                                 {"model": MODEL, "messages": MSG, "max_tokens": 2, "stream": True})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [o["choices"][0]["delta"].get("content") for o in objs[1:-1]] == ["Hello", ","]
    assert objs[-1]["choices"][0]["finish_reason"] == "length" and objs[-1]["choices"][0]["delta"] == {}
    assert "usage" not in objs[-1]  # no include_usage: no usage chunk


def test_keep_alive_after_stream(serve_fake):
    """Chunked SSE keeps the connection reusable: two requests on one connection."""
    s = serve_fake()
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    for stream in (True, False):
        conn.request("POST", "/v1/chat/completions",
                     json.dumps({"model": MODEL, "messages": MSG, "max_tokens": 1, "stream": stream}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        r.read()
    conn.close()


def test_system_and_developer_and_text_parts(serve_fake):
    s = serve_fake()
    s.client().chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ])
    assert s.model.tok.decode(s.model.calls[-1]["ids"]) == "<system>Be brief.<user>ab<assistant>c<user>d<assistant>"


def test_model_field_may_be_the_file_name(serve_fake):
    s = serve_fake()
    status, _, body = s.raw("POST", "/v1/chat/completions",
                            {"model": MODEL + ".bmodel", "messages": MSG, "max_tokens": 1})
    assert status == 200 and body["model"] == MODEL


# -- stop strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_split_across_tokens_cuts_and_stops(serve_fake, stream):
    s = serve_fake(FakeModel(token_s=0.02))
    c = s.client()
    kw = dict(model=MODEL, messages=MSG, max_tokens=50, stop=["world"])
    if stream:
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                       if ch.choices)
    else:
        r = c.chat.completions.create(**kw)
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
    assert text == "Hello, "
    rec = s.model.calls[-1]
    assert rec["stop_reason"] == "cancelled" and rec["tokens"] <= 6  # the engine was stopped, not run to 50
    assert s.srv.scheduler.status()["served"] == 1


def test_stop_string_that_never_matches_releases_held_text(serve_fake):
    s = serve_fake()
    r = s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=3, stop=["wor!"])
    assert r.choices[0].message.content == "Hello, wor"


# -- sampling parameters --------------------------------------------------------------------------


def test_temperature_on_top1_build_is_400_but_absent_or_zero_is_greedy(serve_fake):
    s = serve_fake()
    c = s.client()
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=MSG, temperature=0.7)
    err = e.value.body
    assert err["code"] == "sampling_unsupported" and err["param"] == "temperature"
    assert "--do_sample" in err["message"]
    for kw in ({}, {"temperature": 0}, {"temperature": 0, "top_p": 0.5, "seed": 3}):
        r = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=1, **kw)
        assert r.model_extra["tpuchat"]["sampling"] == "greedy"
        assert s.model.calls[-1]["settings"].sample is False


def test_greedy_fallback_answers_sampling_requests_greedily(serve_fake):
    s = serve_fake(greedy_fallback=True)
    r = s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1, temperature=1)
    assert r.model_extra["tpuchat"]["sampling"] == "ignored"
    assert s.model.calls[-1]["settings"].sample is False


def test_sampling_build_gets_every_setting(serve_fake):
    s = serve_fake(FakeModel(can_sample=True))
    r = s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1, temperature=0.8, top_p=0.9,
                                           seed=42, extra_body={"top_k": 20, "repetition_penalty": 1.1})
    assert r.model_extra["tpuchat"]["sampling"] == "sampled"
    st = s.model.calls[-1]["settings"]
    assert (st.sample, st.temperature, st.top_p, st.top_k, st.repetition_penalty, st.seed) == \
        (True, 0.8, 0.9, 20, 1.1, 42)


# -- errors ---------------------------------------------------------------------------------------


def _post(s, body, **kw):
    return s.raw("POST", "/v1/chat/completions", body, **kw)


def _assert_error(resp, status, code=None, param=None):
    st, _, body = resp
    assert st == status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("body,code,param", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", None, None),
    ({"model": MODEL}, "invalid_type", "messages"),
    ({"model": MODEL, "messages": []}, "empty_array", "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "invalid_value", "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}, "invalid_value", "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "unsupported_content", "messages[0].content"),
    # an image for this text-only model (images on vision models: test_images.py)
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "vision_unsupported", "messages"),
    ({"model": MODEL, "messages": MSG, "n": 2}, "unsupported_parameter", "n"),
    ({"model": MODEL, "messages": MSG, "presence_penalty": 0.5}, "unsupported_parameter", "presence_penalty"),
    ({"model": MODEL, "messages": MSG, "frequency_penalty": 1}, "unsupported_parameter", "frequency_penalty"),
    ({"model": MODEL, "messages": MSG, "logprobs": True}, "unsupported_parameter", "logprobs"),
    ({"model": MODEL, "messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "unsupported_parameter", "tools"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "unsupported_parameter", "tools"),
    ({"model": MODEL, "messages": MSG, "response_format": {"type": "json_object"}},
     "unsupported_parameter", "response_format"),
    ({"model": MODEL, "messages": MSG, "temperature": 3}, "invalid_value", "temperature"),
    ({"model": MODEL, "messages": MSG, "temperature": "hot"}, "invalid_type", "temperature"),
    ({"model": MODEL, "messages": MSG, "max_tokens": 0}, "invalid_value", "max_tokens"),
    ({"model": MODEL, "messages": MSG, "max_tokens": 1.5}, "invalid_type", "max_tokens"),
    ({"model": MODEL, "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
    ({"model": MODEL, "messages": MSG, "stop": 5}, "invalid_type", "stop"),
    ({"model": MODEL, "messages": MSG, "repetition_penalty": 1.2}, "invalid_value", "repetition_penalty"),
    ({"model": MODEL, "messages": MSG, "stream": "yes"}, "invalid_type", "stream"),
])
def test_bad_requests_are_400_in_openai_format(serve_fake, body, code, param):
    s = serve_fake()
    err = _assert_error(_post(s, body), 400, code, param)
    assert err["type"] == "invalid_request_error"
    assert s.model.calls == []  # nothing reached the engine


def test_unknown_model_is_404_model_not_found(serve_fake):
    s = serve_fake()
    with pytest.raises(openai.NotFoundError) as e:
        s.client().chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.body["code"] == "model_not_found" and "fake-model" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        s.client().models.retrieve("gpt-4o")


def test_prompt_too_long_is_context_length_exceeded(serve_fake):
    s = serve_fake(FakeModel(seq_len=40, kv_len=64))
    with pytest.raises(openai.BadRequestError) as e:
        s.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 100}])
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "messages"
    assert "40" in e.value.body["message"]
    assert s.model.calls == []
    # one that fits is answered
    s.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 10}], max_tokens=1)


def test_unknown_endpoint_and_method(serve_fake):
    s = serve_fake()
    _assert_error(s.raw("GET", "/v1/nothing"), 404, "unknown_url")
    _assert_error(s.raw("POST", "/v1/edits", {"input": "x"}), 404, "unknown_url")
    _assert_error(s.raw("DELETE", "/v1/models"), 405)
    # a request line http.server rejects still answers JSON
    sock = socket.create_connection((s.host, s.port), timeout=5)
    sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        part = sock.recv(4096)
        if not part:
            break
        data += part
    data = data.decode()
    sock.close()
    assert data.startswith("HTTP/1.1 501") and '"error"' in data


def test_engine_crash_is_500_and_next_request_works(serve_fake):
    s = serve_fake(FakeModel(fail=EngineCrashed("the engine process was killed by SIGKILL")))
    with pytest.raises(openai.InternalServerError) as e:
        s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1)
    assert e.value.body["code"] == "engine_crashed" and "SIGKILL" in e.value.body["message"]
    r = s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1)
    assert r.choices[0].message.content == "Hello"
    assert s.srv.scheduler.status()["failed"] == 1


def test_engine_crash_mid_stream_is_an_error_event(serve_fake):
    s = serve_fake(FakeModel(fail=EngineCrashed("the engine process was killed by SIGABRT")))
    with pytest.raises(openai.APIError) as e:
        list(s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1, stream=True))
    assert "SIGABRT" in str(e.value)


# -- auth -----------------------------------------------------------------------------------------


def test_auth_on(serve_fake):
    s = serve_fake(api_key="sekret")
    with pytest.raises(openai.AuthenticationError) as e:
        s.client(api_key="wrong").chat.completions.create(model=MODEL, messages=MSG)
    assert e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        s.client(api_key="wrong").models.list()
    st, headers, body = s.raw("GET", "/v1/models")  # no header at all
    assert st == 401 and headers.get("WWW-Authenticate") == "Bearer" and body["error"]["code"] == "invalid_api_key"
    st, _, _ = s.raw("GET", "/v1/models", headers={"Authorization": "Basic c2VrcmV0"})
    assert st == 401
    assert s.raw("GET", "/health")[0] == 200  # health checks need no key
    r = s.client(api_key="sekret").chat.completions.create(model=MODEL, messages=MSG, max_tokens=1)
    assert r.choices[0].message.content == "Hello"
    assert len(s.model.calls) == 1


def test_auth_off_accepts_any_or_no_key(serve_fake):
    s = serve_fake()
    assert s.client(api_key="anything").models.list().data[0].id == MODEL
    assert s.raw("GET", "/v1/models")[0] == 200


# -- queue, order, cancel -------------------------------------------------------------------------


def _stream_in_thread(s, results, key, **kw):
    def run():
        t0 = time.monotonic()
        r = s.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": key}], **kw)
        results[key] = (r.choices[0].message.content, t0, time.monotonic(), r.model_extra["tpuchat"])
    th = threading.Thread(target=run)
    th.start()
    return th


def test_concurrent_clients_are_served_one_at_a_time_in_order(serve_fake):
    s = serve_fake(FakeModel(token_s=0.4))
    results = {}
    threads = []
    for i, key in enumerate(("first", "second", "third")):
        threads.append(_stream_in_thread(s, results, key, max_tokens=4))
        _wait_for(lambda: len(s.model.calls) + s.srv.scheduler.status()["waiting"] == i + 1)
    for th in threads:
        th.join(10)
    assert set(results) == {"first", "second", "third"}
    assert all(v[0] == "Hello, world" for v in results.values())
    order = [s.model.tok.decode(c["ids"]) for c in s.model.calls]
    assert order == ["<user>first<assistant>", "<user>second<assistant>", "<user>third<assistant>"]
    calls = s.model.calls
    for a, b in zip(calls, calls[1:]):
        assert b["started"] >= a["ended"]  # never two at once
    assert results["second"][3]["queue_s"] > 0.2 > results["first"][3]["queue_s"]


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _open_stream(s, content, max_tokens):
    """A raw streaming request; returns (connection, response) after the headers."""
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    conn.request("POST", "/v1/chat/completions",
                 json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}],
                             "max_tokens": max_tokens, "stream": True}),
                 {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _read_content_chunks(resp, n):
    got = 0
    while got < n:
        line = resp.readline().decode()
        if line.startswith("data: {") and '"content": "' in line and '"role"' not in line:
            got += 1


def test_full_queue_is_429(serve_fake):
    s = serve_fake(FakeModel(token_s=0.2), max_waiting=1)
    running = _open_stream(s, "running", 50)
    _wait_for(lambda: s.model.calls)
    waiting = _open_stream(s, "waiting", 1)
    assert s.srv.scheduler.status()["waiting"] == 1
    with pytest.raises(openai.RateLimitError) as e:
        s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1)
    assert e.value.body["code"] == "queue_full" and e.value.body["type"] == "rate_limit_error"
    assert e.value.response.headers["Retry-After"]
    for conn, _ in (running, waiting):
        conn.close()


def test_queue_zero_serves_one_and_refuses_the_rest(serve_fake):
    s = serve_fake(FakeModel(token_s=0.2), max_waiting=0)
    assert s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1).choices[0].message.content
    running = _open_stream(s, "running", 50)
    _wait_for(lambda: s.model.calls and len(s.model.calls) == 2)
    with pytest.raises(openai.RateLimitError):
        s.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1)
    running[0].close()


def test_disconnect_mid_stream_cancels_and_next_starts_at_once(serve_fake):
    s = serve_fake(FakeModel(token_s=1.0))  # slow tokens: "at once" must beat the next token by far
    conn, resp = _open_stream(s, "long", 1000)
    _read_content_chunks(resp, 2)
    results = {}
    nxt = _stream_in_thread(s, results, "next", max_tokens=1)
    _wait_for(lambda: s.srv.scheduler.status()["waiting"] == 1)  # 'next' is waiting behind 'long'
    t_close = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    nxt.join(10)
    long_call, next_call = s.model.calls
    assert long_call["stop_reason"] == "cancelled" and long_call["tokens"] < 10
    # the engine was told at once (not when writing the next token fails, a second later) ...
    assert long_call["ended"] - t_close < 0.5, long_call["ended"] - t_close
    # ... and the next request started right after
    assert next_call["started"] - t_close < 0.5, next_call["started"] - t_close
    assert results["next"][0] == "Hello"
    st = s.srv.scheduler.status()
    assert (st["cancelled"], st["served"]) == (1, 1)


def test_disconnect_while_waiting_drops_the_request(serve_fake):
    s = serve_fake(FakeModel(token_s=0.1))
    results = {}
    running = _stream_in_thread(s, results, "running", max_tokens=5)
    _wait_for(lambda: s.model.calls)
    conn, _ = _open_stream(s, "gone", 5)  # headers come at once, then it waits in the queue
    assert s.srv.scheduler.status()["waiting"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.monotonic() + 2
    while s.srv.scheduler.status()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.srv.scheduler.status()["waiting"] == 0
    running.join(10)
    assert [s.model.tok.decode(c["ids"]) for c in s.model.calls] == ["<user>running<assistant>"]


def test_non_streaming_client_that_gives_up_cancels(serve_fake):
    s = serve_fake(FakeModel(token_s=0.5))
    with pytest.raises(openai.APITimeoutError):
        s.client(timeout=0.4).chat.completions.create(model=MODEL, messages=MSG, max_tokens=1000)
    deadline = time.monotonic() + 5
    while not (s.model.calls and s.model.calls[0]["ended"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.model.calls[0]["stop_reason"] == "cancelled" and s.model.calls[0]["tokens"] < 5


def test_shared_prefix_is_the_default_system_prompt(serve_fake):
    """`serve --prefix-file`: requests without a system message get the shared
    document as theirs (so their prompts start with the pinned rows); a
    request's own system message wins."""
    model = FakeModel(eos_after=1)
    model.pinned = {"tokens": 12}
    s = serve_fake(model)
    s.srv.default_system = "DOC"
    c = s.client()
    c.chat.completions.create(model=MODEL, messages=MSG)
    c.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "own"}] + MSG)
    texts = ["".join(map(chr, call["ids"])) for call in model.calls]
    assert texts == ["<system>DOC<user>Hi<assistant>", "<system>own<user>Hi<assistant>"]
    assert s.raw("GET", "/health")[2]["shared_prefix_tokens"] == 12
