"""Hugging Face tokenizers (tokenizer.json, or a GPT-2 style vocab.json + merges.txt) through
transformers, strictly offline. transformers is imported here only, when such a tokenizer is
loaded: importing it costs about a second, which a tiktoken model should not pay.
"""

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import TokenizerError
from .base import Message, Tokenizer
from .templates import ALPACA_TEMPLATE, CHATML_TEMPLATE


def import_transformers():
    """transformers, set up to never reach the network and to keep quiet: its warnings go to
    stderr, which would tear a full-screen UI. Settings the user made in the environment win."""
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),  # no fork warnings from the engine worker process
    ):
        os.environ.setdefault(key, value)
    import transformers

    return transformers


class HFTokenizer(Tokenizer):
    """A transformers tokenizer; chat templates are rendered by transformers itself."""

    kind = "hf"

    def __init__(self, path: Union[str, Path], hf_tokenizer: Any, kind: str = "hf"):
        self.kind = kind
        self.hf = hf_tokenizer
        # transformers >= 4.49 lets chat_template.jinja override tokenizer_config.json; older
        # ones ignore the file, so read it ourselves to get the same template everywhere.
        jinja_file = Path(path) / "chat_template.jinja"
        template = jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None
        if template is None:
            try:
                template = hf_tokenizer.get_chat_template()
            except (ValueError, AttributeError):  # no template, or transformers < 4.40
                template = getattr(hf_tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates (4.x without get_chat_template)
            template = template.get("default")
        if template is None:
            # No template in the files: ChatML for vocabularies that have its tokens, else
            # WizardCoder's Alpaca prompt (the GPT-BigCode models we support ship none).
            vocab_has_chatml = self._backend_id("<|im_start|>") is not None
            template = CHATML_TEMPLATE if vocab_has_chatml else ALPACA_TEMPLATE
        super().__init__(path, template)
        self._special = None  # type: Optional[Dict[str, int]]

    @classmethod
    def load(cls, path: Union[str, Path], gpt2_files_only: bool = False) -> "HFTokenizer":
        path = Path(path)
        transformers = import_transformers()
        attempts = []  # type: List[Any]
        if gpt2_files_only and not (path / "tokenizer_config.json").is_file():
            attempts.append(transformers.GPT2TokenizerFast)
        else:
            attempts += [transformers.AutoTokenizer, transformers.PreTrainedTokenizerFast]
            if gpt2_files_only:
                attempts.append(transformers.GPT2TokenizerFast)
        errors = []
        for loader in attempts:
            try:
                # trust_remote_code stays off: a tokenizer dir must not run code.
                hf = loader.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
            except Exception as e:  # transformers raises many types here
                first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
                errors.append("{}: {}".format(getattr(loader, "__name__", loader), first_line))
                continue
            return cls(path, hf, kind="gpt2-bpe" if gpt2_files_only else "hf")
        raise TokenizerError("cannot load the tokenizer in {} ({})".format(path, "; ".join(errors)))

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # clean_up_tokenization_spaces is forced off: for BPE vocabularies it rewrites the
        # model's text (" ." -> ".", code like "f(a , b)"), transformers 5 ignores it for BPE too,
        # and it would make the streamed text depend on tokens that come later.
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_tokens(self) -> Dict[str, int]:
        if self._special is None:
            special = {}  # type: Dict[str, int]
            for token_id, added in self.hf.added_tokens_decoder.items():
                if getattr(added, "special", False):
                    special[str(added)] = int(token_id)
            for token in self.hf.all_special_tokens:
                token_id = self.token_to_id(token)
                if token_id is not None:
                    special[token] = token_id
            self._special = special
        return dict(self._special)

    @property
    def bos_token(self) -> Optional[str]:
        return self.hf.bos_token

    @property
    def eos_token(self) -> Optional[str]:
        return self.hf.eos_token

    def token_to_id(self, token: str) -> Optional[int]:
        return self._backend_id(token)

    def _backend_id(self, token: str) -> Optional[int]:
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is not None:
            return backend.token_to_id(token)
        return self.hf.get_vocab().get(token)

    def _render(self, messages: List[Message], add_generation_prompt: bool, **template_kwargs: Any) -> str:
        return self.hf.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
