"""Chat templates: reading them from a tokenizer dir, built-in fallbacks, and a renderer.

The renderer is used for tokenizers that transformers does not load (Qwen v1's tiktoken). It
sets up Jinja the way transformers' `apply_chat_template` does (sandbox, trim/lstrip blocks,
loopcontrols, `tojson` without HTML escaping, `raise_exception`, `strftime_now`, the special
tokens as variables), so a template renders to the same text either way.
"""

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

# ChatML as Qwen v1's `make_context` builds it (the model ships no Jinja template), with its
# default system prompt. It is the same text Qwen1.5's own template produces.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# WizardCoder's Alpaca-style prompt ("### Instruction:" / "### Response:"), for GPT-2 style
# vocabularies that come without a template. Earlier answers end with the eos token, as the
# model produced them.
ALPACA_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\\n\\n' }}"
    "{% set loop_messages = messages %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:' + message['content'] + (eos_token or '') + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:' }}{% endif %}"
)


def read_chat_template(directory: Union[str, Path]) -> Optional[str]:
    """The template a tokenizer dir defines: `chat_template.jinja` wins (newer transformers
    save it there), else `chat_template` in tokenizer_config.json (a string, or a list of
    named templates of which we take "default")."""
    directory = Path(directory)
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    config = read_json(directory / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON object from a file, or {} when the file is missing or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; transformers replaces it with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_template(
    template: str,
    messages: List[Dict[str, Any]],
    add_generation_prompt: bool = True,
    special_tokens: Optional[Dict[str, str]] = None,
    **kwargs: Any,
) -> str:
    """Render like transformers' apply_chat_template(tokenize=False). `special_tokens` maps
    names such as "bos_token"/"eos_token" to their text; templates read them as variables."""
    variables = dict(special_tokens or {})
    variables.update(kwargs)
    return _compile(template).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
    )
