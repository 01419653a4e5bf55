"""Finding a model's tokenizer dir and loading the right kind of tokenizer from it."""

from pathlib import Path
from typing import Optional, Union

from ..errors import TokenizerError
from .base import Tokenizer

PathLike = Union[str, Path]


def tokenizer_kind(directory: PathLike) -> Optional[str]:
    """Which kind of tokenizer the dir holds: "hf" (tokenizer.json, or a SentencePiece
    tokenizer.model with its tokenizer_config.json), "qwen-tiktoken", "gpt2-bpe"
    (vocab.json + merges.txt), or None."""
    d = Path(directory)
    if (d / "tokenizer.json").is_file():
        return "hf"
    if (d / "qwen.tiktoken").is_file():
        return "qwen-tiktoken"
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        return "gpt2-bpe"
    if (d / "tokenizer.model").is_file() and (d / "tokenizer_config.json").is_file():
        return "hf"
    return None


def find_tokenizer_dir(
    explicit: Optional[PathLike] = None, bmodel_path: Optional[PathLike] = None, cwd: Optional[PathLike] = None
) -> Path:
    """The tokenizer dir to use: `explicit` (--tokenizer; a file inside it also works) if given,
    else the `config/` dir that llm_convert writes beside the bmodel, else ./token_config.

    An explicit dir that holds no tokenizer is an error, not a reason to look elsewhere: the
    user asked for that one. Raises TokenizerError naming every dir searched.
    """
    if explicit is not None:
        d = Path(explicit).expanduser()
        if d.is_file():
            d = d.parent
        if not d.is_dir():
            raise TokenizerError("tokenizer dir {} does not exist".format(d))
        if tokenizer_kind(d) is None:
            raise TokenizerError(
                "{} holds no tokenizer (expected tokenizer.json, qwen.tiktoken, or vocab.json + merges.txt)".format(d)
            )
        return d
    candidates = []  # type: List[Path]
    if bmodel_path is not None:
        from ..runtime.weights import split_models

        bmodel_path = split_models(bmodel_path)[0]  # --model a,b: the first one's config/
        candidates.append(Path(bmodel_path).expanduser().resolve().parent / "config")
    candidates.append((Path(cwd) if cwd is not None else Path.cwd()) / "token_config")
    for d in candidates:
        if d.is_dir() and tokenizer_kind(d) is not None:
            return d
    raise TokenizerError(
        "no tokenizer found (searched {}); pass --tokenizer DIR with tokenizer.json, "
        "qwen.tiktoken or vocab.json + merges.txt".format(", ".join(str(d) for d in candidates))
    )


def load_tokenizer(directory: PathLike) -> Tokenizer:
    """The tokenizer in `directory`, of the kind its files say (see tokenizer_kind). A
    tokenizer.json is read with the `tokenizers` library when that gives transformers' results
    (hf_fast.can_load), else through transformers."""
    d = Path(directory).expanduser()
    kind = tokenizer_kind(d)
    if kind == "qwen-tiktoken":
        from .qwen_tiktoken import QwenTiktokenTokenizer

        return QwenTiktokenTokenizer(d)
    if kind == "hf":
        from .hf_fast import FastHFTokenizer, can_load

        if can_load(d):
            return FastHFTokenizer(d)
    if kind in ("hf", "gpt2-bpe"):
        from .hf import HFTokenizer

        return HFTokenizer.load(d, gpt2_files_only=(kind == "gpt2-bpe"))
    raise TokenizerError(
        "{} holds no tokenizer (expected tokenizer.json, qwen.tiktoken, or vocab.json + merges.txt)".format(d)
    )


def open_tokenizer(explicit: Optional[PathLike] = None, bmodel_path: Optional[PathLike] = None) -> Tokenizer:
    """find_tokenizer_dir + load_tokenizer."""
    return load_tokenizer(find_tokenizer_dir(explicit, bmodel_path))
