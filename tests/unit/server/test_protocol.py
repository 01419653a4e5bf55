"""Request rules and the bind policy, without a server."""

import pytest

from tpuchat.server import http as H
from tpuchat.server import protocol as P

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                       ("127.0.0.2", True), ("0.0.0.0", False), ("::", False), ("", False),
                                       ("192.168.1.20", False), ("10.0.0.1", False)])
def test_loopback_detection(host, loop):
    assert H.is_loopback(host) is loop


def test_bind_policy():
    H.check_bind("127.0.0.1", None, False)
    H.check_bind("0.0.0.0", "key", False)
    H.check_bind("0.0.0.0", None, True)
    with pytest.raises(H.BindRefused) as e:
        H.check_bind("0.0.0.0", None, False)
    assert e.value.exit_code == 2 and "--api-key" in str(e.value) and "--insecure" in str(e.value)
    with pytest.raises(H.BindRefused):
        H.check_bind("192.168.1.20", "", False)


def test_can_sample_from_description():
    import dataclasses

    from tpuchat.tui.fake import fake_desc

    top1 = fake_desc()
    assert not H.model_can_sample(top1)
    assert not H.model_can_sample(dataclasses.replace(top1, heads=["greedy_head"]))
    assert H.model_can_sample(dataclasses.replace(top1, lm_head="logits", heads=["greedy_head"]))
    assert H.model_can_sample(dataclasses.replace(top1, lm_head="logits", heads=["penalty_sample_head"]))


def test_defaults_are_greedy_without_limit():
    r = P.parse_request({"messages": MSG}, can_sample=True)
    assert (r.stream, r.include_usage, r.stops, r.sampling) == (False, False, [], "greedy")
    assert r.settings.sample is False and r.settings.max_new_tokens == 0  # 0: the server fills in the room


def test_stop_string_forms():
    assert P.parse_request({"messages": MSG, "stop": "x"}, False).stops == ["x"]
    assert P.parse_request({"messages": MSG, "stop": ["a", "", "b"]}, False).stops == ["a", "b"]


def test_zero_penalties_and_n1_are_fine():
    r = P.parse_request({"messages": MSG, "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0,
                         "logprobs": False, "response_format": {"type": "text"}, "user": "u"}, False)
    assert r.sampling == "greedy"


def test_stream_options_usage():
    r = P.parse_request({"messages": MSG, "stream": True, "stream_options": {"include_usage": True}}, False)
    assert r.stream and r.include_usage


def test_error_body_shape():
    e = P.bad("nope", "messages", "x")
    assert e.status == 400
    assert e.body() == {"error": {"message": "nope", "type": "invalid_request_error", "param": "messages",
                                  "code": "x"}}
