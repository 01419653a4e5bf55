"""A conversation and its context budget.

Before each turn the whole conversation is rendered with the model's chat
template; if the prompt plus room for the answer does not fit the bmodel
(prefill length S, KV length L), the oldest whole turns are dropped (the
system prompt stays) and the caller is told how many.  A single message that
cannot fit on its own is an error, and the conversation is left as it was.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..errors import PromptTooLong


@dataclass
class Message:
    role: str  # system | user | assistant
    content: str
    stopped: bool = False  # an answer cut short by the user or a failure


@dataclass
class Conversation:
    system: Optional[str] = None
    messages: List[Message] = field(default_factory=list)

    def add(self, role: str, content: str, stopped: bool = False) -> Message:
        m = Message(role, content, stopped)
        self.messages.append(m)
        return m

    def clear(self) -> None:
        self.messages.clear()

    def _render(self, tok, messages: List[Message]) -> List[int]:
        return tok.encode_chat([{"role": m.role, "content": m.content} for m in messages], system=self.system)

    def fit(self, tok, seq_len: int, kv_len: int, answer_room: int) -> Tuple[List[int], int]:
        """Prompt ids for the next answer and how many old turns were left out.

        The prompt must fit one prefill (<= seq_len) and leave answer_room
        KV positions for the answer."""
        limit = min(seq_len, kv_len - answer_room)
        msgs = list(self.messages)
        dropped = 0
        while True:
            ids = self._render(tok, msgs)
            if len(ids) <= limit:
                return ids, dropped
            # Drop the oldest turn: a user message and the answers after it.
            cut = next((i for i in range(1, len(msgs)) if msgs[i].role == "user"), None)
            if cut is None:
                raise PromptTooLong(
                    f"this message needs {len(ids)} prompt tokens but the model takes at most {limit} "
                    f"(prefill length {seq_len}, KV length {kv_len}, {answer_room} kept for the answer); "
                    "shorten it"
                )
            msgs = msgs[cut:]
            dropped += 1
