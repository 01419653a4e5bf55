"""Pilot tests of images in the chat UI over the scripted FakeModel (vision=True):
/image and the picker, the pending chip, the sent message's chip and half-block
preview, what the engine gets per turn, stored attachments, and the errors
(each keeps what the user typed and the attached image)."""

import pytest

from tests.fixtures.vision_config import make_png
from tpuchat.tui.fake import FakeModel
from tpuchat.tui.screens import ImagePicker, ImageTree
from tpuchat.tui.widgets import AttachmentChip
from tpuchat.vision import load_image
from tpuchat.vision.preview import HalfBlockPreview

from .test_app import boxes, ready, sync, wait_for

pytestmark = pytest.mark.timeout(60)


def notes(app):
    return [n.message for n in app._notifications]


def chip(app) -> AttachmentChip:
    return app.query_one("#attachment", AttachmentChip)


async def send(pilot, text):
    pilot.app.prompt.load_text(text)
    await pilot.press("enter")


@sync
async def test_image_command_chip_preview_and_turns(app_factory, tmp_path):
    pic = make_png(tmp_path / "square.png", (64, 48))
    digest = load_image(pic).digest
    model = FakeModel(answer="A red square.", vision=True)
    app = app_factory(model=model)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        assert not chip(app).display
        await send(pilot, f"/image {pic}")
        assert app.prompt.text == ""
        assert chip(app).display and "square.png" in str(chip(app).render()) and "64×48" in str(chip(app).render())
        await send(pilot, "What is this?")
        await wait_for(pilot, lambda: not app.generating and boxes(app, "assistant"))
        assert not chip(app).display and app.pending_image is None
        user = boxes(app, "user")[0]
        assert "square.png" in str(user.query_one(".msg-chip").render())
        user.thaw()  # a finished message is drawn from its captured rows (frozen.py): measure the live one
        await pilot.pause(0.1)
        preview = user.query_one(".msg-preview")
        assert isinstance(preview.renderable if hasattr(preview, "renderable") else preview.content, HalfBlockPreview)
        assert (preview.region.width, preview.region.height) == (16, 6)  # 64x48 fit into 24x6 cells (12 px rows)
        assert model.images_seen[-1] == (digest, 0)
        assert model.requests[-1][0] == FakeModel.IMAGE_ID

        await send(pilot, "And its colour?")  # text-only follow-up: the image goes again
        await wait_for(pilot, lambda: not app.generating and len(boxes(app, "assistant")) == 2)
        assert model.images_seen[-1] == (digest, 0)
        assert len(boxes(app, "user")[1].query(".msg-chip")) == 0

        stored = app.store.messages(app.conv_id)
        assert [(a.path, a.digest) for a in stored[0].attachments] == [(str(pic.resolve()), digest)]
        assert stored[2].attachments == []


@sync
async def test_image_picker_attaches_a_file(app_factory, tmp_path, monkeypatch):
    make_png(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    model = FakeModel(answer="ok", vision=True)
    app = app_factory(model=model)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        app.prompt.load_text("draft question")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, ImagePicker))
        tree = app.screen.query_one(ImageTree)
        await wait_for(pilot, lambda: len(tree.root.children) > 0)
        names = [str(n.label) for n in tree.root.children]
        assert names == ["photo.png"]  # the text file is filtered out
        tree.move_cursor(tree.root.children[0])
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, ImagePicker))
        assert app.pending_image is not None and app.pending_image.name == "photo.png"
        assert app.prompt.text == "draft question"  # the draft is untouched
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.generating and boxes(app, "assistant"))
        assert model.images_seen[-1][0] == app.session.conv.messages[0].attachment.digest


@sync
async def test_image_errors_keep_what_was_typed(app_factory, tmp_path):
    app = app_factory(model=FakeModel(vision=True))
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        await send(pilot, f"/image {tmp_path / 'missing.png'}")
        assert "image not found" in notes(app)[-1]
        assert app.prompt.text == f"/image {tmp_path / 'missing.png'}" and app.pending_image is None
        await send(pilot, f"/image {bad}")
        assert "is not an image" in notes(app)[-1] and app.prompt.text == f"/image {bad}"
        # one image per message
        await send(pilot, f"/image {make_png(tmp_path / 'a.png')}")
        assert app.pending_image.name == "a.png"
        await send(pilot, f"/image {make_png(tmp_path / 'b.png')}")
        assert "one image per message" in notes(app)[-1] and app.pending_image.name == "a.png"
        assert app.prompt.text.endswith("b.png")
        await send(pilot, "/image off")
        assert app.pending_image is None and not chip(app).display


@sync
async def test_image_for_a_text_only_model(app_factory, tmp_path):
    model = FakeModel()
    app = app_factory(model=model)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        pic = make_png(tmp_path / "a.png")
        await send(pilot, f"/image {pic}")
        assert "text-only model" in notes(app)[-1] and app.pending_image is None
        assert app.prompt.text == f"/image {pic}"
        # attached while a vision model was open, then a text-only one: refused at send, both kept
        from tpuchat.chat.session import attach_image

        app._set_pending(attach_image(pic))
        await send(pilot, "What is this?")
        assert "text-only model" in notes(app)[-1]
        assert app.prompt.text == "What is this?" and app.pending_image is not None and model.requests == []


@sync
async def test_refused_message_gives_back_text_and_image(app_factory, tmp_path):
    model = FakeModel(vision=True, max_prompt_chars=10)
    app = app_factory(model=model)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        await send(pilot, f"/image {make_png(tmp_path / 'a.png')}")
        await send(pilot, "a question that is far too long for this model")
        await wait_for(pilot, lambda: boxes(app, "error"))
        assert app.prompt.text == "a question that is far too long for this model"
        assert app.pending_image is not None and chip(app).display
        assert "image is still attached" in boxes(app, "error")[0].text
        assert app.store.messages(app.conv_id) == []


@sync
async def test_reopened_conversation_shows_chip_or_says_file_gone(app_factory, tmp_path):
    kept = make_png(tmp_path / "kept.png")
    gone = make_png(tmp_path / "gone.png", colour=(0, 255, 0))
    model = FakeModel(answer="ok", vision=True)
    app = app_factory(model=model)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        for pic in (kept, gone):
            await send(pilot, f"/image {pic}")
            await send(pilot, "What is this?")
            n = len(boxes(app, "assistant"))
            await wait_for(pilot, lambda: not app.generating and len(boxes(app, "assistant")) == n)
        conv_id = app.conv_id
        gone.unlink()
        await app.action_new_conversation()
        await app.open_conversation(conv_id)
        await pilot.pause()
        users = boxes(app, "user")
        assert "kept.png" in str(users[0].query_one(".msg-chip").render()) and users[0].query(".msg-preview")
        gone_chip = str(users[1].query_one(".msg-chip").render())
        assert "gone.png" in gone_chip and "file gone" in gone_chip and not users[1].query(".msg-preview")
        # the next turn goes on without the gone image (a notice says so): the older image is the
        # latest one the model can see again
        await send(pilot, "Thanks")
        await wait_for(pilot, lambda: not app.generating and len(boxes(app, "assistant")) == 3)
        assert model.images_seen[-1] == (load_image(kept).digest, 0)
        assert any("gone" in n for n in notes(app))


@sync
async def test_retry_and_edit_keep_the_image(app_factory, tmp_path):
    pic = make_png(tmp_path / "r.png")
    digest = load_image(pic).digest
    model = FakeModel(answer="ok", vision=True)
    app = app_factory(model=model)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot, app)
        await send(pilot, f"/image {pic}")
        await send(pilot, "What is this?")
        await wait_for(pilot, lambda: not app.generating and boxes(app, "assistant"))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(model.requests) == 2 and not app.generating)
        assert model.images_seen[-1] == (digest, 0)
        assert app.session.conv.messages[0].attachment.digest == digest
        await pilot.press("ctrl+e")  # the message and its image come back for editing
        await wait_for(pilot, lambda: app.prompt.text == "What is this?")
        assert app.pending_image is not None and app.pending_image.digest == digest and chip(app).display
        assert app.store.messages(app.conv_id) == []
