"""The server tests' model: the one scripted FakeModel (tpuchat/tui/fake.py) with the server's
defaults: short pieces repeated until max_tokens, one every 10 ms, a 200/256-token build, and the
FakeTok tokenizer (one token per character) the server encodes prompts with."""

from tpuchat.tui import fake

IMAGE_ID = fake.FakeModel.IMAGE_ID  # the image token, as FakeTok renders an image part
PIECES = ["Hello", ",", " wor", "ld", "!", " How", " are", " you", "?"]


def FakeModel(**kw) -> fake.FakeModel:
    defaults = dict(pieces=PIECES, token_s=0.01, prefill_s=0.0, name="fake-model.bmodel", seq_len=200, kv_len=256)
    return fake.FakeModel(**dict(defaults, **kw))
