"""One prompt, one answer: what `tpuchat run` and `tpuchat bench` do."""

import dataclasses
from typing import Callable, List, Optional, Sequence

from ..errors import ImageError, PromptTooLong, TpuchatError
from ..options import check_can_sample
from ..runtime.client import EngineClient
from .session import Delta, Finished, GenSettings, ModelSpec, attach_image, open_chat_model


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


def answer_record(events, on_text: Optional[Callable[[str], None]] = None) -> dict:
    """Consume ChatModel.stream_ids, streaming text to on_text; returns the result
    record (text, token_ids and the GenerationStats fields)."""
    for ev in events:
        if isinstance(ev, Delta):
            if on_text:
                on_text(ev.text)
        elif isinstance(ev, Finished):
            return dict({"text": ev.text, "token_ids": ev.token_ids}, **ev.stats.to_dict())
    raise TpuchatError("the engine ended the answer without its stats")  # pragma: no cover - stream_ids always finishes


def one_shot(model: str, prompt: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None,
             tokenizer_dir: Optional[str] = None, max_new_tokens: int = 256, use_template: bool = True,
             system: Optional[str] = None, ignore_eos: bool = False,
             on_text: Optional[Callable[[str], None]] = None, image: Optional[str] = None,
             client: Optional[EngineClient] = None, settings: Optional[GenSettings] = None) -> dict:
    """image: an image file for a vision bmodel (`tpuchat run --image`); settings: sampling
    (greedy when None)."""
    from ..runtime.bmodel_file import check_bmodel_file

    check_bmodel_file(model)  # a bad model path is the more basic error
    att = None
    if image is not None:
        if not use_template:
            raise ImageError("--image needs the chat template (it places the image token): drop --no-template")
        att = attach_image(image)  # a bad file fails before the model loads
    settings = dataclasses.replace(settings or GenSettings(), max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
    own = client is None
    chat_model = open_chat_model(ModelSpec(model, devids, lib_dir, tokenizer_dir), client or EngineClient())
    try:
        check_can_sample(settings, chat_model.desc)
        ids = encode_prompt(chat_model.tok, prompt, use_template, system, att)
        check_fits(len(ids), chat_model.desc)
        image_args = {}
        if att is not None:
            from ..vision.prompt import find_image_pos

            chat_model.check_vision()
            image_args = {"image": chat_model.image_inputs(att),
                          "image_pos": find_image_pos(ids, chat_model.image_token_id)}
        result = answer_record(chat_model.stream_ids(ids, settings, **image_args), on_text)
    finally:
        if own:
            chat_model.close()
    result["model"] = model
    if att is not None:
        result["image"] = {"path": att.path, "sha256": att.digest, "image_pos": image_args["image_pos"]}
    return result
