"""Images in a conversation, up to the engine's door: loading and checking files,
Mllama preprocessing, the image token in the real template, and what the chat
session hands the engine on every turn (a scripted engine client stands in for
the device; the real tokenizer and image processor come from a test config dir).
"""

import dataclasses
import os
import shutil

import numpy as np
import pytest

from tests.fixtures.vision_config import make_png, make_vision_config_dir, vision_desc
from tpuchat.chat.conversation import IMAGE_PLACEHOLDER, Attachment, Conversation
from tpuchat.chat.session import ChatModel, ChatSession, Finished, GenSettings, Notice
from tpuchat.errors import ImageError
from tpuchat.runtime.client import DoneEvent, TokenEvent
from tpuchat.runtime.image_inputs import ImageInputs
from tpuchat.runtime.protocol import GenerationStats

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="session")
def vision_dir(tmp_path_factory):
    return make_vision_config_dir(tmp_path_factory.mktemp("vision") / "config")


@pytest.fixture(scope="session")
def vtok(vision_dir):
    from tpuchat.text import load_tokenizer

    return load_tokenizer(vision_dir)


class ScriptedClient:
    """EngineClient's generate() surface: records every call, answers 'ok'."""

    def __init__(self, answer_ids):
        self.answer_ids = list(answer_ids)
        self.calls = []

    def generate(self, ids, max_new_tokens=256, stop_ids=(), sampling=None, reuse=True, image=None, image_pos=None,
                 lookup=True):
        self.calls.append({"ids": list(ids), "image": image, "image_pos": image_pos})
        for t in self.answer_ids[:max_new_tokens]:
            yield TokenEvent(t)
        yield DoneEvent(GenerationStats(prompt_tokens=len(ids), new_tokens=len(self.answer_ids), ftl_s=0.1,
                                        tokens_per_s=10.0, device_ms_per_token=90.0, host_us_per_token=50.0,
                                        stop_reason="eos"))

    def cancel(self):
        pass

    def close(self):
        pass


def make_session(vtok, desc=None, kv_len=256):
    client = ScriptedClient(vtok.encode(" ok"))
    model = ChatModel.from_parts(vtok, client, desc or vision_desc(kv_len=kv_len, seq_len=kv_len))
    return ChatSession(model, Conversation(), GenSettings(max_new_tokens=8)), client


def run(events):
    return list(events)


IMAGE = "<|image|>"


def prompt_text(vtok, ids):
    return vtok.decode(ids, skip_special_tokens=False)


# -- loading and checking --------------------------------------------------------------------------


def test_load_image_reads_size_format_digest(tmp_path):
    from tpuchat.vision import load_image

    p = make_png(tmp_path / "pic.png", (64, 48))
    img = load_image(p)
    assert (img.width, img.height, img.format, img.name) == (64, 48, "PNG", "pic.png")
    import hashlib

    assert img.digest == hashlib.sha256(p.read_bytes()).hexdigest()
    assert "pic.png 64×48 PNG" in img.describe()


@pytest.mark.parametrize("case", ["missing", "directory", "not_image", "truncated", "too_big", "too_many_pixels",
                                  "empty"])
def test_bad_image_files_give_one_line(tmp_path, monkeypatch, case):
    from tpuchat.vision import image as vimage
    from tpuchat.vision import load_image

    p = tmp_path / "x.png"
    if case == "missing":
        expect = "image not found"
    elif case == "directory":
        p.mkdir()
        expect = "is a directory, not an image"
    elif case == "not_image":
        p.write_text("hello, I am text\n")
        expect = "is not an image"
    elif case == "truncated":
        make_png(p, (200, 200))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        expect = "damaged or truncated"
    elif case == "too_big":
        make_png(p, (64, 64))
        monkeypatch.setattr(vimage, "MAX_IMAGE_BYTES", 100)
        expect = "images up to 100 B are accepted"
    elif case == "too_many_pixels":
        make_png(p, (400, 300))
        monkeypatch.setattr(vimage, "MAX_IMAGE_PIXELS", 100_000)
        expect = "400×300 pixels"
    else:
        p.write_bytes(b"")
        expect = "is empty"
    with pytest.raises(ImageError) as e:
        load_image(p)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg and str(p.name) in msg


def test_decompression_bomb_is_refused(tmp_path):
    """A small file that decodes to a huge image: refused from the header, before decoding."""
    from PIL import Image

    from tpuchat.vision import load_image

    p = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(str(p), "PNG", optimize=True)
    assert p.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too many pixels|MP are accepted"):
        load_image(p)


def test_unreadable_file(tmp_path, monkeypatch):
    from pathlib import Path

    from tpuchat.vision import load_image

    p = make_png(tmp_path / "secret.png")
    if os.geteuid() == 0:  # root reads any file: make the read fail as it would for a user

        def no_access(self, *a, **kw):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(Path, "open", no_access)
    else:
        p.chmod(0)
    with pytest.raises(ImageError, match="cannot read image .*Permission denied"):
        load_image(p)


# -- preprocessing ---------------------------------------------------------------------------------


def test_preprocess_matches_the_image_processor(tmp_path, vision_dir):
    """ImageInputs carry exactly the processor's pixel values, ids and mask; padding tiles are zero."""
    from tpuchat.vision import load_image, load_processor, preprocess

    img = load_image(make_png(tmp_path / "wide.png", (300, 100)))
    proc = load_processor(vision_dir)
    inputs = preprocess(img, proc, tiles=4)
    assert isinstance(inputs, ImageInputs)
    ref = proc(images=[[img.image.convert("RGB")]], return_tensors="np")
    pv = np.frombuffer(inputs.pixel_values, np.float32).reshape(4, 3, 112, 112)
    n = int(ref["num_tiles"][0][0])
    assert inputs.tiles == 4 and inputs.size == 112 and inputs.used_tiles == n and n > 1
    assert inputs.aspect_ratio_mask == tuple([1] * n + [0] * (4 - n))
    assert inputs.aspect_ratio_id == int(ref["aspect_ratio_ids"][0][0])
    np.testing.assert_array_equal(pv[:n], ref["pixel_values"][0, 0, :n])
    assert not pv[n:].any()
    assert inputs.digest == img.digest


def test_processor_for_another_tile_count_is_refused(tmp_path, vision_dir):
    from tpuchat.vision import load_image, load_processor, preprocess

    img = load_image(make_png(tmp_path / "a.png"))
    with pytest.raises(ImageError, match="up to 4 tiles but the model takes 8"):
        preprocess(img, load_processor(vision_dir), tiles=8)


def test_missing_preprocessor_config(tmp_path, vision_dir):
    from tpuchat.vision import load_processor

    d = tmp_path / "cfg"
    shutil.copytree(vision_dir, d)
    (d / "preprocessor_config.json").unlink()
    with pytest.raises(ImageError, match="no preprocessor_config.json"):
        load_processor(d)


def test_half_block_preview_draws_the_picture(tmp_path):
    from rich.console import Console

    from tpuchat.vision import load_image
    from tpuchat.vision.preview import HalfBlockPreview

    img = load_image(make_png(tmp_path / "a.png", (80, 40), colour=(250, 0, 0)))
    prev = HalfBlockPreview(img.image, max_width=20, max_height=8)
    assert (prev.width, prev.height) == (20, 5)
    console = Console(width=40, force_terminal=True, color_system="truecolor", record=True)
    console.print(prev)
    lines = console.export_text().splitlines()
    assert len(lines) == 5 and all(line == "▀" * 20 for line in lines)
    # the middle cell is the red square, the corner the blue background
    top, bottom = prev.rows[2][10]
    assert top[0] > 200 and top[2] < 60
    assert prev.rows[0][0][0][2] > 150


# -- the prompt --------------------------------------------------------------------------------------


def test_template_puts_one_image_token_before_the_text(vtok):
    conv = Conversation(system="Be brief.")
    conv.add("user", "What is this?", attachment=Attachment("/a.png", "d1", "a.png"))
    p = conv.fit_prompt(vtok, 256, 256, 8)
    text = prompt_text(vtok, p.ids)
    assert text.count(IMAGE) == 1 and IMAGE + "What is this?" in text and "Be brief." in text
    assert p.image_message is conv.messages[0]


def test_text_only_conversation_renders_as_before(vtok):
    conv = Conversation()
    conv.add("user", "Hi")
    assert conv.fit(vtok, 256, 256, 8)[0] == vtok.encode_chat([{"role": "user", "content": "Hi"}])


# -- the session: what the engine gets ---------------------------------------------------------------


def test_image_and_position_on_every_turn_and_replacement(tmp_path, vtok):
    from tpuchat.vision import image_token_id

    img_id = image_token_id(vtok)
    s, client = make_session(vtok)
    a = make_png(tmp_path / "a.png", (64, 48))
    b = make_png(tmp_path / "b.png", (48, 64), colour=(0, 200, 0))

    ev = run(s.send("What is this?", image=str(a)))
    assert isinstance(ev[-1], Finished) and ev[-1].text == " ok"
    c1 = client.calls[-1]
    assert isinstance(c1["image"], ImageInputs) and c1["ids"][c1["image_pos"]] == img_id
    assert c1["ids"].count(img_id) == 1
    digest_a = c1["image"].digest
    assert s.conv.messages[0].attachment.path == str(a.resolve())

    run(s.send("And the colour?"))  # text-only follow-up: the image is still in the prompt
    c2 = client.calls[-1]
    assert c2["image"].digest == digest_a and c2["image_pos"] == c1["image_pos"]
    assert c2["ids"][: len(c1["ids"])] == c1["ids"]  # the earlier turn's prompt is a prefix
    assert c2["image"] is c1["image"]  # preprocessed once

    run(s.send("Now this one?", image=b))  # a new image replaces the old one
    c3 = client.calls[-1]
    assert c3["image"].digest != digest_a and c3["ids"].count(img_id) == 1
    text = prompt_text(vtok, c3["ids"])
    assert IMAGE_PLACEHOLDER + " What is this?" in text and IMAGE + "Now this one?" in text
    assert c3["image_pos"] > c2["image_pos"] and c3["ids"][c3["image_pos"]] == img_id


def test_image_turn_left_out_of_the_context_means_no_image(tmp_path, vtok):
    s, client = make_session(vtok, kv_len=60)
    run(s.send("What is in this picture?", image=make_png(tmp_path / "a.png")))
    assert client.calls[-1]["image"] is not None
    events = run(s.send("Describe the image in one sentence. The cat sits on the mat. Hello!"))
    assert any(isinstance(e, Notice) and "oldest turn" in e.text for e in events)
    assert client.calls[-1]["image"] is None and client.calls[-1]["image_pos"] is None


def test_image_for_a_text_only_model(tmp_path, vtok):
    desc = dataclasses.replace(vision_desc(), has_vision=False)
    s, client = make_session(vtok, desc=desc)
    with pytest.raises(ImageError, match="text-only model"):
        run(s.send("What is this?", image=make_png(tmp_path / "a.png")))
    assert s.conv.messages == [] and client.calls == []


def test_bad_image_leaves_the_conversation_alone(tmp_path, vtok):
    s, client = make_session(vtok)
    run(s.send("Hi"))
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ImageError, match="not an image"):
        run(s.send("What is this?", image=bad))
    assert [m.content for m in s.conv.messages] == ["Hi", " ok"] and len(client.calls) == 1


def test_image_token_typed_in_the_text_is_refused(tmp_path, vtok):
    s, client = make_session(vtok)
    with pytest.raises(ImageError, match="2 image tokens"):
        run(s.send("look <|image|> here", image=make_png(tmp_path / "a.png")))
    assert s.conv.messages == [] and client.calls == []


def test_reopened_conversation_with_its_image_file_gone(tmp_path, vtok):
    """A stored attachment whose file was deleted: the next turn says so and goes on without it."""
    from tpuchat.vision import load_image

    p = make_png(tmp_path / "gone.png")
    digest = load_image(p).digest
    p.unlink()
    s, client = make_session(vtok)
    s.conv.add("user", "What is this?", attachment=Attachment(str(p), digest, "gone.png"))
    s.conv.add("assistant", "A square.")
    events = run(s.send("Are you sure?"))
    notes = [e.text for e in events if isinstance(e, Notice)]
    assert any("is gone" in n for n in notes)
    assert client.calls[-1]["image"] is None
    assert IMAGE_PLACEHOLDER + " What is this?" in prompt_text(vtok, client.calls[-1]["ids"])


def test_reopened_conversation_reloads_its_image(tmp_path, vtok):
    from tpuchat.vision import load_image

    p = make_png(tmp_path / "kept.png")
    digest = load_image(p).digest
    s, client = make_session(vtok)
    s.conv.add("user", "What is this?", attachment=Attachment(str(p), digest, "kept.png"))
    s.conv.add("assistant", "A square.")
    run(s.send("Are you sure?"))
    assert client.calls[-1]["image"].digest == digest


def test_history_images_with_a_text_only_model(tmp_path, vtok):
    s, client = make_session(vtok, desc=dataclasses.replace(vision_desc(), has_vision=False))
    s.conv.add("user", "What is this?", attachment=Attachment("/nowhere.png", "x", "nowhere.png"))
    s.conv.add("assistant", "A square.")
    events = run(s.send("Thanks"))
    assert any(isinstance(e, Notice) and "cannot see images" in e.text for e in events)
    assert client.calls[-1]["image"] is None
    assert IMAGE not in prompt_text(vtok, client.calls[-1]["ids"])


# -- tpuchat run --image, chat --plain /image ---------------------------------------------------------


def fake_bmodel(d):
    """A file check_bmodel_file accepts (header only), with the test config dir beside it as config/."""
    import struct

    d.mkdir(parents=True, exist_ok=True)
    p = d / "tiny-mllama.bmodel"
    p.write_bytes(struct.pack("<IIIQ", 0xFF55AAEE, 20, 0, 0))
    return p


class FakeEngineClient(ScriptedClient):
    """EngineClient as `tpuchat run` uses it: open, generate, close."""

    instances = []
    desc = None

    def __init__(self, *a, **kw):
        super().__init__([])
        FakeEngineClient.instances.append(self)

    def open(self, model, devids=(0,), lib_dir=None):
        from tpuchat.text import load_tokenizer

        self.answer_ids = load_tokenizer(os.path.join(os.path.dirname(model), "config")).encode(" A red square.")
        return dataclasses.replace(self.desc)


@pytest.fixture
def fake_run(tmp_path, vision_dir, monkeypatch):
    from tpuchat.chat import oneshot

    model = fake_bmodel(tmp_path / "m")
    shutil.copytree(vision_dir, tmp_path / "m" / "config")
    FakeEngineClient.instances = []
    FakeEngineClient.desc = vision_desc()
    monkeypatch.setattr(oneshot, "EngineClient", FakeEngineClient)
    return model


def cli(*args):
    from typer.testing import CliRunner

    from tpuchat.cli import app

    return CliRunner().invoke(app, list(args))


def test_run_with_image_streams_the_answer(fake_run, tmp_path, vtok):
    from tpuchat.vision import image_token_id

    pic = make_png(tmp_path / "q.png")
    r = cli("run", "--model", str(fake_run), "--image", str(pic), "What is this?")
    assert r.exit_code == 0, r.output
    assert "A red square." in r.stdout and "FTL" in r.stderr and "TPS" in r.stderr
    call = FakeEngineClient.instances[-1].calls[-1]
    assert call["image"].digest == load_digest(pic) and call["ids"][call["image_pos"]] == image_token_id(vtok)
    assert IMAGE + "What is this?" in prompt_text(vtok, call["ids"])

    r = cli("run", "--model", str(fake_run), "--image", str(pic), "--json", "What is this?")
    assert r.exit_code == 0, r.output
    import json

    out = json.loads(r.stdout)
    assert out["image"]["sha256"] == load_digest(pic) and out["image"]["image_pos"] == call["image_pos"]


def load_digest(p):
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", ["not_image", "text_only", "no_template"])
def test_run_with_image_errors(fake_run, tmp_path, case):
    pic = make_png(tmp_path / "q.png")
    args = ["run", "--model", str(fake_run), "--image", str(pic), "What is this?"]
    if case == "not_image":
        pic.write_text("text")
        expect = "is not an image"
    elif case == "text_only":
        FakeEngineClient.desc = dataclasses.replace(vision_desc(), has_vision=False)
        expect = "text-only model"
    else:
        args.insert(1, "--no-template")
        expect = "--image needs the chat template"
    r = cli(*args)
    assert r.exit_code == 10
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert all(not c.calls for c in FakeEngineClient.instances)


def test_plain_chat_image_command(tmp_path, vtok):
    import io

    from tpuchat.chat.plain import PlainChat

    client = ScriptedClient(vtok.encode(" ok"))
    model = ChatModel.from_parts(vtok, client, vision_desc())
    err = io.StringIO()
    chat = PlainChat(model, 8, None, out=io.StringIO(), err=err)
    pic = make_png(tmp_path / "p.png")
    chat.command(f"/image {tmp_path / 'nope.png'}")
    assert "image not found" in err.getvalue() and chat.refill == f"/image {tmp_path / 'nope.png'}"
    chat.refill = ""
    chat.command(f"/image {pic}")
    assert "image attached: p.png" in err.getvalue()
    chat.command(f"/image {pic}")
    assert "one image per message" in err.getvalue()
    chat.answer("What is this?")
    assert client.calls[-1]["image"].digest == load_digest(pic) and chat.pending_image is None
    chat.answer("More?")
    assert client.calls[-1]["image"].digest == load_digest(pic)
    # a text-only model refuses /image
    model.desc = dataclasses.replace(vision_desc(), has_vision=False)
    chat.command(f"/image {pic}")
    assert "text-only model" in err.getvalue().splitlines()[-1] and chat.pending_image is None
