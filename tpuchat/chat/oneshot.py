"""One prompt, one answer: what `tpuchat run` and `tpuchat bench` do."""

from typing import Callable, List, Optional, Sequence

from ..errors import ImageError, PromptTooLong
from ..runtime.client import DoneEvent, EngineClient
from ..runtime.protocol import GenerationStats


def encode_prompt(tok, prompt: str, use_template: bool, system: Optional[str], image=None) -> List[int]:
    """Prompt ids: the model's chat template around one user message, or the
    raw text for a plain completion.  With `image` (an Attachment) the message
    carries an image part and the template places the image token."""
    if not use_template:
        if image is not None:
            raise ImageError("--image needs the chat template (it places the image token): drop --no-template")
        return tok.encode(prompt)
    if image is not None:
        from .conversation import Message, template_messages

        return tok.encode_chat(template_messages([Message("user", prompt, attachment=image)])[0], system=system)
    return tok.encode_chat([{"role": "user", "content": prompt}], system=system)


def check_fits(n_prompt: int, desc) -> None:
    if n_prompt > desc.kv_len:
        raise PromptTooLong(
            f"the prompt has {n_prompt} tokens but this bmodel holds at most {desc.kv_len} "
            "(its KV length); shorten it or use a bmodel compiled with a longer --seq_length"
        )


def stream_answer(client: EngineClient, tok, ids: Sequence[int], max_new_tokens: int, stop_ids,
                  on_text: Optional[Callable[[str], None]] = None, **image_args) -> dict:
    """Generate, streaming decoded text to on_text; returns the result record.
    image_args: image (ImageInputs) and image_pos, for a vision bmodel."""
    from ..text.stream import IncrementalDecoder

    dec = IncrementalDecoder(tok)
    generated: List[int] = []
    stats = GenerationStats()
    for ev in client.generate(ids, max_new_tokens, list(stop_ids), **image_args):
        if isinstance(ev, DoneEvent):
            stats = ev.stats
        else:
            generated.append(ev.id)
            delta = dec.push(ev.id)
            if delta and on_text:
                on_text(delta)
    rest = dec.flush()
    if rest and on_text:
        on_text(rest)
    result = {"text": tok.decode(generated), "token_ids": generated}
    result.update(stats.to_dict())
    return result


def one_shot(model: str, prompt: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None,
             tokenizer_dir: Optional[str] = None, max_new_tokens: int = 256, use_template: bool = True,
             system: Optional[str] = None, ignore_eos: bool = False,
             on_text: Optional[Callable[[str], None]] = None, image: Optional[str] = None,
             client: Optional[EngineClient] = None) -> dict:
    """image: an image file for a vision bmodel (`tpuchat run --image`)."""
    from ..runtime.bmodel_file import check_bmodel_file
    from ..text import find_tokenizer_dir, load_tokenizer

    check_bmodel_file(model)  # a bad model path is the more basic error
    tok = load_tokenizer(find_tokenizer_dir(tokenizer_dir, model))
    att = None
    if image is not None:
        from .session import attach_image

        if not use_template:
            raise ImageError("--image needs the chat template (it places the image token): drop --no-template")
        att = attach_image(image)  # a bad file fails before the model loads
    ids = encode_prompt(tok, prompt, use_template, system, att)
    own = client is None
    client = client or EngineClient()
    try:
        desc = client.open(model, devids, lib_dir)
        check_fits(len(ids), desc)
        image_args = {}
        if att is not None:
            image_args = image_arguments(tok, client, desc, model, att, ids)
        result = stream_answer(client, tok, ids, max_new_tokens, () if ignore_eos else sorted(tok.eos_ids), on_text,
                               **image_args)
    finally:
        if own:
            client.close()
    result["model"] = model
    if att is not None:
        result["image"] = {"path": att.path, "sha256": att.digest, "image_pos": image_args["image_pos"]}
    return result


def image_arguments(tok, client, desc, model: str, att, ids: Sequence[int]) -> dict:
    """The engine's image and image_pos for a prompt with one image (ImageError for a
    text-only model, a missing image processor, or a prompt without one image token)."""
    from ..vision.prompt import find_image_pos
    from .session import ChatModel

    cm = ChatModel.from_parts(tok, client, desc, model)
    cm.check_vision()
    return {"image": cm.image_inputs(att), "image_pos": find_image_pos(ids, cm.image_token_id)}
