"""A conversation and its context budget.

Before each turn the whole conversation is rendered with the model's chat
template; if the prompt plus room for the answer does not fit the bmodel
(prefill length S, KV length L), the oldest whole turns are dropped (the
system prompt stays) and the caller is told how many.  A single message that
cannot fit on its own is an error, and the conversation is left as it was.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import PromptTooLong

# What an image that is no longer in the prompt (replaced by a newer one, or
# unreadable) becomes in its message's text.
IMAGE_PLACEHOLDER = "[image]"


@dataclass
class Attachment:
    """An image attached to a message: where it was and what it was.

    `loaded` holds the decoded image while the process has it (a LoadedImage;
    never stored); `gone` is set when the file can no longer be read, and the
    message then says IMAGE_PLACEHOLDER instead of carrying the image."""

    path: Optional[str]
    digest: str
    name: str = ""
    loaded: Any = field(default=None, repr=False, compare=False)
    gone: bool = False

    @classmethod
    def from_loaded(cls, img) -> "Attachment":
        return cls(path=img.path, digest=img.digest, name=img.name, loaded=img)


@dataclass
class Message:
    role: str  # system | user | assistant
    content: str
    stopped: bool = False  # an answer cut short by the user or a failure
    attachment: Optional[Attachment] = None  # one image per message (user messages)


def template_messages(messages: List[Message], images: bool = True) -> Tuple[List[Dict[str, Any]], Optional[int]]:
    """Messages as the chat template takes them, and the index of the one that
    carries the image.  The model takes one image: the latest readable one is an
    image part (before the text, as Llama-3.2-Vision expects); older images
    become IMAGE_PLACEHOLDER in their text.  Without images the content stays a
    plain string, so text-only templates see exactly what they always saw.
    images=False (a model without vision): every image becomes the placeholder."""
    last = None if not images else max((i for i, m in enumerate(messages) if m.attachment is not None and not m.attachment.gone),
               default=None)
    out: List[Dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.attachment is None:
            out.append({"role": m.role, "content": m.content})
        elif i == last:
            out.append({"role": m.role, "content": [{"type": "image"}, {"type": "text", "text": m.content}]})
        else:
            out.append({"role": m.role, "content": IMAGE_PLACEHOLDER + (" " + m.content if m.content else "")})
    return out, last


@dataclass
class FittedPrompt:
    ids: List[int]
    dropped: int  # old turns left out
    image_message: Optional[Message] = None  # the message whose image is in the prompt


@dataclass
class Conversation:
    system: Optional[str] = None
    messages: List[Message] = field(default_factory=list)

    def add(self, role: str, content: str, stopped: bool = False,
            attachment: Optional[Attachment] = None) -> Message:
        m = Message(role, content, stopped, attachment)
        self.messages.append(m)
        return m

    def clear(self) -> None:
        self.messages.clear()

    def _render(self, tok, messages: List[Message], images: bool = True) -> List[int]:
        return tok.encode_chat(template_messages(messages, images)[0], system=self.system)

    def fit(self, tok, seq_len: int, kv_len: int, answer_room: int) -> Tuple[List[int], int]:
        """Prompt ids for the next answer and how many old turns were left out.

        The prompt must fit one prefill (<= seq_len) and leave answer_room
        KV positions for the answer."""
        p = self.fit_prompt(tok, seq_len, kv_len, answer_room)
        return p.ids, p.dropped

    def fit_prompt(self, tok, seq_len: int, kv_len: int, answer_room: int, images: bool = True) -> FittedPrompt:
        """fit(), also saying which kept message carries the image (if any).
        images=False renders every image as a placeholder (a text-only model)."""
        limit = min(seq_len, kv_len - answer_room)
        msgs = list(self.messages)
        dropped = 0
        while True:
            ids = self._render(tok, msgs, images)
            if len(ids) <= limit:
                return FittedPrompt(ids, dropped, self._image_message(msgs) if images else None)
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

    @staticmethod
    def _image_message(msgs: List[Message]) -> Optional[Message]:
        i = template_messages(msgs)[1]
        return msgs[i] if i is not None else None

    def has_images(self) -> bool:
        return any(m.attachment is not None for m in self.messages)
