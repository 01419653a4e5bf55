"""Images over the HTTP API with a scripted vision model: OpenAI image_url parts as data: URLs,
local files only under --image-dir, http(s) refused, and the errors (each a 400 in OpenAI's format)."""

import base64
import hashlib

import pytest

from tests.fixtures.vision_config import make_png
from tpuchat.errors import TpuchatError

from .fakes import IMAGE_ID, FakeModel

openai = pytest.importorskip("openai")


def data_url(path, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def image_msg(url, text="What is this?"):
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def post(s, messages, **extra):
    return s.raw("POST", "/v1/chat/completions", dict({"model": "fake-model", "messages": messages, "max_tokens": 3},
                                                      **extra))


def test_data_url_image_reaches_the_engine(serve_fake, tmp_path):
    s = serve_fake(FakeModel(vision=True, eos_after=2))
    pic = make_png(tmp_path / "a.png")
    r = s.client().chat.completions.create(model="fake-model", messages=[image_msg(data_url(pic))])
    assert r.choices[0].message.content == "Hello,"
    call = s.model.calls[-1]
    assert call["image"].digest == sha(pic)
    assert call["ids"][call["image_pos"]] == IMAGE_ID and call["ids"].count(IMAGE_ID) == 1
    # the image goes before the message's text
    assert call["ids"][call["image_pos"] + 1: call["image_pos"] + 5] == [ord(c) for c in "What"]
    assert r.usage.prompt_tokens == len(call["ids"])


def test_streaming_with_an_image_and_a_text_follow_up(serve_fake, tmp_path):
    s = serve_fake(FakeModel(vision=True, eos_after=2))
    pic = make_png(tmp_path / "a.png")
    history = [image_msg(data_url(pic)), {"role": "assistant", "content": "A square."},
               {"role": "user", "content": "What colour?"}]
    stream = s.client().chat.completions.create(model="fake-model", messages=history, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello,"
    call = s.model.calls[-1]
    assert call["image"].digest == sha(pic) and call["ids"][call["image_pos"]] == IMAGE_ID


def test_only_the_latest_image_is_used(serve_fake, tmp_path):
    s = serve_fake(FakeModel(vision=True, eos_after=1))
    a, b = make_png(tmp_path / "a.png"), make_png(tmp_path / "b.png", colour=(0, 250, 0))
    history = [image_msg(data_url(a)), {"role": "assistant", "content": "Red."},
               image_msg(data_url(b), "And this?")]
    status, _, body = post(s, history)
    assert status == 200, body
    call = s.model.calls[-1]
    assert call["image"].digest == sha(b) and call["ids"].count(IMAGE_ID) == 1
    text = "".join(chr(i) for i in call["ids"] if i != IMAGE_ID)
    assert "<user>[image] What is this?" in text and call["image_pos"] > text.index("Red.")


def test_allowed_dir_paths_and_file_urls(serve_fake, tmp_path):
    allowed = tmp_path / "pics"
    allowed.mkdir()
    pic = make_png(allowed / "in.png")
    s = serve_fake(FakeModel(vision=True, eos_after=1), image_dir=str(allowed))
    for url in (str(pic), "file://" + str(pic), "in.png"):
        status, _, body = post(s, [image_msg(url)])
        assert status == 200, (url, body)
        assert s.model.calls[-1]["image"].digest == sha(pic)


@pytest.mark.parametrize("case", ["outside", "dotdot", "symlink_out", "file_url_outside"])
def test_paths_outside_the_allowed_dir_are_refused(serve_fake, tmp_path, case):
    allowed = tmp_path / "pics"
    allowed.mkdir()
    secret = make_png(tmp_path / "secret.png")
    url = {"outside": str(secret), "dotdot": "../secret.png", "symlink_out": "link.png",
           "file_url_outside": "file://" + str(secret)}[case]
    (allowed / "link.png").symlink_to(secret)
    s = serve_fake(FakeModel(vision=True), image_dir=str(allowed))
    status, _, body = post(s, [image_msg(url)])
    assert status == 400 and body["error"]["code"] == "image_path_not_allowed"
    assert "outside the server's image dir" in body["error"]["message"]
    assert s.model.calls == []


@pytest.mark.parametrize("case", ["path_without_dir", "http", "not_base64", "not_image", "text_only", "two_images",
                                  "assistant_image", "missing_in_dir"])
def test_image_errors(serve_fake, tmp_path, case):
    pic = make_png(tmp_path / "a.png")
    kw, model = {}, FakeModel(vision=True)
    messages = [image_msg(data_url(pic))]
    if case == "path_without_dir":
        messages, code, words = [image_msg(str(pic))], "image_path_not_allowed", "--image-dir"
    elif case == "http":
        messages, code, words = [image_msg("https://example.com/cat.png")], "image_url_unsupported", "data: URL"
    elif case == "not_base64":
        messages, code, words = [image_msg("data:image/png;base64,@@@")], "invalid_image_url", "not valid base64"
    elif case == "not_image":
        messages = [image_msg("data:image/png;base64," + base64.b64encode(b"hello").decode())]
        code, words = "invalid_image", "not an image"
    elif case == "text_only":
        model, code, words = FakeModel(), "vision_unsupported", "text-only"
    elif case == "two_images":
        m = image_msg(data_url(pic))
        m["content"].append({"type": "image_url", "image_url": {"url": data_url(pic)}})
        messages, code, words = [m], "too_many_images", "one image per message"
    elif case == "assistant_image":
        m = image_msg(data_url(pic))
        m["role"] = "assistant"
        messages, code, words = [{"role": "user", "content": "hi"}, m], "invalid_value", "user messages"
    else:
        (tmp_path / "d").mkdir()
        kw = {"image_dir": str(tmp_path / "d")}
        messages, code, words = [image_msg("nope.png")], "invalid_image", "image not found"
    s = serve_fake(model, **kw)
    status, _, body = post(s, messages)
    assert status == 400, body
    assert body["error"]["code"] == code and words in body["error"]["message"]
    assert "\n" not in body["error"]["message"]
    assert s.model.calls == []


def test_bad_image_dir_is_refused_at_start(tmp_path):
    from tpuchat.server import make_server

    with pytest.raises(TpuchatError, match="is not a directory"):
        make_server(FakeModel(vision=True), image_dir=str(tmp_path / "nope"))


def test_text_requests_are_unchanged_on_a_vision_model(serve_fake):
    s = serve_fake(FakeModel(vision=True, eos_after=1))
    status, _, body = post(s, [{"role": "user", "content": "Hi"}])
    assert status == 200 and s.model.calls[-1]["image"] is None
