"""The plain chat on the simulator: multi-turn, and nothing lost when the
engine process dies mid-answer."""

import io
import os
import signal

import pytest

from tests.fixtures import models
from tpuchat.chat.plain import PlainChat
from tpuchat.chat.session import ChatModel
from tpuchat.runtime.client import EngineClient
from tpuchat.text import load_tokenizer

pytestmark = pytest.mark.sim


class KillAfter(io.StringIO):
    """Output that kills the engine worker once `n` pieces were written."""

    def __init__(self, client, n):
        super().__init__()
        self.client, self.n, self.armed = client, n, False

    def write(self, s):
        if self.armed and s:
            self.n -= 1
            if self.n == 0:
                os.kill(self.client.pid, signal.SIGKILL)
                self.armed = False
        return super().write(s)


def test_worker_killed_mid_answer_keeps_the_conversation(sim_lib, build, tmp_path):
    build("qwen2-bf16")
    client = EngineClient(tmp_path / "engine.log")
    try:
        model = ChatModel(str(models.bmodel_path("qwen2-bf16")), [0], sim_lib, client=client)
        out, err = KillAfter(client, 1), io.StringIO()
        chat = PlainChat(model, max_new_tokens=12, system=None, out=out, err=err)

        chat.answer("First question")
        assert [m.role for m in chat.conv.messages] == ["user", "assistant"]

        out.armed = True
        chat.answer("Second question")
        assert "killed by SIGKILL" in err.getvalue()
        roles = [(m.role, m.content, m.stopped) for m in chat.conv.messages]
        assert roles[2] == ("user", "Second question", False)
        assert roles[3][0] == "assistant" and roles[3][2] is True  # the partial answer, marked stopped

        chat.answer("Third question")  # a fresh worker reloads the model
        assert chat.conv.messages[-1].role == "assistant" and not chat.conv.messages[-1].stopped
        assert err.getvalue().count("FTL") == 2
    finally:
        client.close()


def test_turn_prompts_follow_the_template(sim_lib, build, tmp_path):
    """Each turn re-renders the whole conversation with the model's template."""
    build("qwen2-bf16")
    tok = load_tokenizer(models.tokenizer_dir("qwen2-bf16"))
    with EngineClient(tmp_path / "engine.log") as client:
        model = ChatModel(str(models.bmodel_path("qwen2-bf16")), [0], sim_lib, client=client)
        desc = model.desc
        chat = PlainChat(model, max_new_tokens=3, system="Be brief.", out=io.StringIO(), err=io.StringIO())
        chat.answer("Hi")
        chat.answer("Again")
        msgs = [{"role": m.role, "content": m.content} for m in chat.conv.messages]
        ids, dropped = chat.conv.fit(tok, desc.seq_len, desc.kv_len, 3)
        assert dropped == 0
        assert ids == tok.encode_chat(msgs, system="Be brief.")
        text = tok.decode(ids, skip_special_tokens=False)
        assert text.count("<|im_start|>user") == 2 and "Be brief." in text
