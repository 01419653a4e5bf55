"""One prompt, one answer: what `tpuchat run` and `tpuchat bench` do."""

from typing import Callable, List, Optional, Sequence

from ..errors import PromptTooLong
from ..runtime.client import DoneEvent, EngineClient


def encode_prompt(tok, prompt: str, use_template: bool, system: Optional[str]) -> List[int]:
    """Prompt ids: the model's chat template around one user message, or the
    raw text for a plain completion."""
    if not use_template:
        return tok.encode(prompt)
    return tok.encode_chat([{"role": "user", "content": prompt}], system=system)


def check_fits(n_prompt: int, desc: dict) -> None:
    if n_prompt > desc["kv_len"]:
        raise PromptTooLong(
            f"the prompt has {n_prompt} tokens but this bmodel holds at most {desc['kv_len']} "
            "(its KV length); shorten it or use a bmodel compiled with a longer --seq_length"
        )


def stream_answer(client: EngineClient, tok, ids: Sequence[int], max_new_tokens: int, stop_ids,
                  on_text: Optional[Callable[[str], None]] = None) -> dict:
    """Generate, streaming decoded text to on_text; returns the result record."""
    from ..text.stream import IncrementalDecoder

    dec = IncrementalDecoder(tok)
    generated: List[int] = []
    stats: dict = {}
    for ev in client.generate(ids, max_new_tokens, list(stop_ids)):
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
    result.update(stats)
    return result


def one_shot(model: str, prompt: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None,
             tokenizer_dir: Optional[str] = None, max_new_tokens: int = 256, use_template: bool = True,
             system: Optional[str] = None, ignore_eos: bool = False,
             on_text: Optional[Callable[[str], None]] = None) -> dict:
    from ..runtime.bmodel_file import check_bmodel_file
    from ..text import find_tokenizer_dir, load_tokenizer

    check_bmodel_file(model)  # a bad model path is the more basic error
    tok = load_tokenizer(find_tokenizer_dir(tokenizer_dir, model))
    ids = encode_prompt(tok, prompt, use_template, system)
    with EngineClient() as client:
        desc = client.open(model, devids, lib_dir)
        check_fits(len(ids), desc)
        result = stream_answer(client, tok, ids, max_new_tokens, () if ignore_eos else sorted(tok.eos_ids), on_text)
    result["model"] = model
    return result
