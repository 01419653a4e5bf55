"""Images on a Llama-3.2-Vision bmodel, on the simulator.

The tiny `mllama` fixture is a random MllamaForConditionalGeneration compiled
by the real llm_convert.  The image is made with Pillow and preprocessed here
with transformers' own Mllama image processor from the variant's config dir;
every token is compared with transformers' MllamaForConditionalGeneration on
the same inputs (rows from the image token on attend to the image's tiles).
"""

from __future__ import annotations

import base64
import hashlib
import sys

import numpy as np
import pytest

from tests.fixtures import models
from tests.fixtures.compare import assert_greedy_matches
from tpuchat.compiler import build as _build
from tpuchat.errors import ImageError, TpuchatError
from tpuchat.runtime.client import DoneEvent, EngineClient, TokenEvent
from tpuchat.runtime.image_inputs import ImageInputs

pytestmark = pytest.mark.sim

VARIANT = "mllama"
N_NEW = 8
# Inputs on which transformers' greedy choices have no near-tie (top-2 logit
# margin >= 0.06 for 12 tokens, both images), so bf16 must reproduce them exactly.
QUESTION = "What colour is it?"
TEXT_PROMPT = "Tell me a story about a robot."


# -- inputs -------------------------------------------------------------------


def synthetic_image(width: int, height: int, phase: int):
    """A deterministic RGB picture: gradients and stripes, different per phase."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([
        (x * 255 // max(1, width - 1) + 60 * phase) % 256,
        (y * 255 // max(1, height - 1)) % 256,
        ((x // 8 + y // 8) % 2) * 200 + 40 * phase,
    ], axis=-1).astype("uint8")
    return Image.fromarray(rgb, "RGB")


def preprocess(config_dir, image) -> ImageInputs:
    """transformers' Mllama image processor, configured by the model's preprocessor_config.json."""
    try:
        from transformers import MllamaImageProcessorPil as processor_cls  # needs no torchvision
    except ImportError:  # transformers 4.x
        from transformers import MllamaImageProcessor as processor_cls
    proc = processor_cls.from_pretrained(str(config_dir))
    feats = proc(images=[[image]], return_tensors="np")
    pixels = np.ascontiguousarray(feats["pixel_values"][0, 0], dtype=np.float32)
    tiles, _, size, _ = pixels.shape
    mask = tuple(int(v) for v in feats["aspect_ratio_mask"][0, 0])
    return ImageInputs(pixels.tobytes(), tiles, size, int(feats["aspect_ratio_ids"][0, 0]), mask,
                       hashlib.sha256(image.tobytes()).hexdigest())


def image_request(ids, image: ImageInputs | None, pos: int | None, n: int = N_NEW) -> dict:
    req = {"ids": list(ids), "max_new_tokens": n}
    if image is not None:
        req["image"] = {"pixel_values": base64.b64encode(image.pixel_values).decode(), "tiles": image.tiles,
                        "size": image.size, "aspect_ratio_id": image.aspect_ratio_id,
                        "aspect_ratio_mask": list(image.aspect_ratio_mask)}
        req["image_pos"] = pos
    return req


class Vision:
    def __init__(self, config_dir):
        from transformers import AutoTokenizer

        self.config_dir = config_dir
        self.tok = AutoTokenizer.from_pretrained(str(config_dir))
        self.image_token = self.tok.convert_tokens_to_ids("<|image|>")
        self.eot = self.tok.convert_tokens_to_ids("<|eot_id|>")
        self.images = [preprocess(config_dir, synthetic_image(230, 110, 0)),
                       preprocess(config_dir, synthetic_image(96, 170, 1))]

    def ids(self, messages, generation_prompt=True):
        text = self.tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def image_question(self, question=QUESTION):
        ids = self.ids([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])
        return ids, ids.index(self.image_token)


@pytest.fixture(scope="module")
def vision(build):
    build(VARIANT)
    return Vision(models.tokenizer_dir(VARIANT))


@pytest.fixture(scope="module")
def engine(sim_lib, build, tmp_path_factory):
    build(VARIANT)
    client = EngineClient(tmp_path_factory.mktemp("vision") / "engine.log")
    desc = client.open(str(models.bmodel_path(VARIANT)), [0], sim_lib)
    yield client, desc
    client.close()


def generate(client, ids, image=None, pos=None, n=N_NEW):
    tokens, stats = [], None
    for ev in client.generate(ids, max_new_tokens=n, stop_ids=(), image=image, image_pos=pos):
        if isinstance(ev, TokenEvent):
            tokens.append(ev.id)
        elif isinstance(ev, DoneEvent):
            stats = ev.stats
    return tokens, stats


def report(what, stats):
    print(f"[vision] {what}: vit {stats.vit_s:.2f} s, FTL {stats.ftl_s:.2f} s "
          f"(reused {stats.reused_tokens} of {stats.prompt_tokens}), "
          f"decode {stats.decode_s / max(1, stats.new_tokens - 1):.2f} s/token", file=sys.stderr)


# -- tests ----------------------------------------------------------------------


def test_vision_bmodel_description(engine):
    _, desc = engine
    assert desc.has_vision is True
    assert desc.vision_tiles == 4 and desc.image_size == 112 and desc.image_patches == 65
    assert desc.cross_layers == [1, 3]  # read from the nets' inputs
    assert desc.image_kv_bytes == 2 * 2 * (4 * 260 * 16 * 2)
    from tpuchat.tables import _vision_text

    assert "4 tiles of 112 px" in _vision_text(desc) and "layers 1, 3" in _vision_text(desc)


def test_image_question_matches_transformers_and_vit_output_within_bf16(engine, vision):
    client, _ = engine
    ids, pos = vision.image_question()
    image = vision.images[0]
    assert image.used_tiles < image.tiles  # the padding-tile masks are exercised
    tokens, stats = generate(client, ids, image, pos)
    ref = _build.reference_requests(VARIANT, [image_request(ids, image, pos)])[0]
    report("image question", stats)
    assert assert_greedy_matches(tokens, ref) >= 4
    assert stats.vit_s > 0 and not stats.image_reused

    dev = np.asarray(client.image_states(), dtype=np.float32)
    want = np.frombuffer(base64.b64decode(ref["vit"]), dtype=np.float32)
    assert dev.shape == want.shape == (4 * 65 * 64,)
    err = np.abs(dev - want).max()
    cos = float(dev @ want / (np.linalg.norm(dev) * np.linalg.norm(want)))
    print(f"[vision] vit output: max |err| {err:.4f} (max |ref| {np.abs(want).max():.3f}), cosine {cos:.6f}",
          file=sys.stderr)
    assert cos > 0.9999
    assert err <= 0.02 * np.abs(want).max() + 0.01  # bf16 keeps ~3 significant digits


def test_follow_up_text_turn_reuses_the_image_and_the_prefix(engine, vision):
    client, _ = engine
    ids1, pos = vision.image_question()
    image = vision.images[0]
    answer, _ = generate(client, ids1, image, pos)
    follow = vision.tok("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nTell me more.<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
    ids2 = ids1 + answer + follow
    tokens, stats = generate(client, ids2, image, pos)  # the image token stays in the history
    report("follow-up turn", stats)
    refs = _build.reference_requests(VARIANT, [image_request(ids2, image, pos),
                                               image_request(ids1 + answer, image, pos)])
    assert assert_greedy_matches(tokens, refs[0]) >= 4
    assert stats.image_reused and stats.vit_s == 0
    # The shim re-prefills when that is cheaper than appending the new rows one
    # decode step each (on the simulator: more than ~2 new rows).  A prompt that
    # adds one row to the cache takes the append path: the cached rows, computed
    # with the image, are kept and the new row attends to the image K/V held on
    # the device.
    generate(client, ids1, image, pos)
    tokens, stats = generate(client, ids1 + answer, image, pos)
    report("continuation (appended)", stats)
    assert stats.reused_tokens == len(ids1) + len(answer) - 1 and stats.image_reused
    assert assert_greedy_matches(tokens, refs[1]) >= 4


def test_second_image_replaces_the_first(engine, vision):
    client, _ = engine
    ids, pos = vision.image_question()
    first, second = vision.images
    generate(client, ids, first, pos, n=2)
    tokens, stats = generate(client, ids, second, pos)
    report("second image", stats)
    refs = _build.reference_requests(VARIANT, [image_request(ids, second, pos), image_request(ids, first, pos)])
    assert assert_greedy_matches(tokens, refs[0]) >= 4
    assert refs[0]["ids"] != refs[1]["ids"]  # the image matters to this model
    assert stats.vit_s > 0 and stats.reused_tokens == 0


def test_text_only_prompt_on_the_vision_model(engine, vision):
    client, _ = engine
    ids, pos = vision.image_question()
    generate(client, ids, vision.images[0], pos, n=2)  # the cache holds an image sequence
    text_ids = vision.ids([{"role": "user", "content": TEXT_PROMPT}])
    tokens, stats = generate(client, text_ids)
    report("text only", stats)
    ref = _build.reference_requests(VARIANT, [image_request(text_ids, None, None)])[0]
    assert assert_greedy_matches(tokens, ref) >= 4
    assert stats.reused_tokens == 0  # rows computed with the image are not reused
    # and back to the image: the held image is reused, nothing of the text sequence is
    tokens, stats = generate(client, ids, vision.images[0], pos, n=3)
    assert stats.image_reused and stats.reused_tokens == 0


def test_image_given_to_a_text_only_bmodel_is_a_clear_error(open_variant, vision):
    client, desc = open_variant("qwen2-bf16")
    assert desc.has_vision is False and desc.cross_layers == []
    with pytest.raises(ImageError) as exc:
        generate(client, [1, 2, 3], vision.images[0], 1)
    assert isinstance(exc.value, TpuchatError)
    msg = str(exc.value)
    assert "\n" not in msg and "no vision encoder" in msg
    tokens, _ = generate(client, [1, 2, 3], n=2)  # the engine is still there
    assert len(tokens) == 2


def test_pixels_cross_the_worker_pipe_once_and_again_when_forgotten(engine, vision):
    """Follow-up turns send the image by digest only; an engine that no
    longer holds it (reopened, switched bmodels) gets the pixels again."""
    from tpuchat.runtime.protocol import Generate

    client, _ = engine
    ids, pos = vision.image_question()
    first, second = vision.images
    sent = []
    real_send = client._send

    def spy(request):
        if isinstance(request, Generate):
            sent.append(request.image)
        return real_send(request)

    client._send = spy
    try:
        generate(client, ids, second, pos, n=1)
        _, stats = generate(client, ids, second, pos, n=1)
        assert sent[-2].pixel_values and sent[-1].pixel_values == b"" and stats.image_reused
        client._worker_image = first.digest  # as if the engine had forgotten what it held
        del sent[:]
        tokens, stats = generate(client, ids, first, pos, n=2)
        assert [bool(s.pixel_values) for s in sent] == [False, True]  # refused by digest, resent whole
        assert stats.vit_s > 0 and len(tokens) == 2
    finally:
        client._send = real_send


def test_run_with_an_image_end_to_end(vision, sim_lib, tmp_path):
    """`tpuchat run --image`: the product's own image loading, preprocessing
    and template, through the CLI, against transformers."""
    import json
    import os
    import subprocess

    path = tmp_path / "picture.png"
    synthetic_image(230, 110, 0).save(path)
    env = dict(os.environ, TPUCHAT_STATE=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "tpuchat.cli", "run", "--model", str(models.bmodel_path(VARIANT)),
                        "--image", str(path), "--json", "--ignore-eos", "-n", str(N_NEW), QUESTION],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ids, pos = vision.image_question()
    assert out["prompt_tokens"] == len(ids) and out["image"]["image_pos"] == pos
    from PIL import Image

    ref = _build.reference_requests(VARIANT, [image_request(ids, preprocess(vision.config_dir,
                                                                             Image.open(path).convert("RGB")), pos)])[0]
    assert assert_greedy_matches(out["token_ids"], ref) >= 4
