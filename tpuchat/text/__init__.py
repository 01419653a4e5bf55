"""The text layer: tokenizers, chat templates, streaming detokenization, stop handling.

Pure Python, no device code. Importing it is cheap: transformers is imported only when a
Hugging Face tokenizer is loaded, tiktoken only for Qwen v1.

    tok = open_tokenizer(args.tokenizer, bmodel_path)      # or load_tokenizer(find_tokenizer_dir(...))
    ids = tok.encode_chat(messages, system=system_prompt)  # prompt ids
    dec = IncrementalDecoder(tok)
    for token in generated:
        if token in tok.eos_ids: break
        show(dec.push(token))
    show(dec.flush())
"""

from .base import Message, Tokenizer
from .loader import find_tokenizer_dir, load_tokenizer, open_tokenizer, tokenizer_kind
from .stops import StopStringMatcher, config_eos_ids, find_stop_string, generation_defaults
from .stream import IncrementalDecoder

__all__ = [
    "IncrementalDecoder",
    "Message",
    "StopStringMatcher",
    "Tokenizer",
    "config_eos_ids",
    "find_stop_string",
    "find_tokenizer_dir",
    "generation_defaults",
    "load_tokenizer",
    "open_tokenizer",
    "tokenizer_kind",
]
