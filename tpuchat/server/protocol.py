"""The OpenAI chat-completions wire format: request checking and response objects.

Nothing here touches sockets or the engine, so every rule is unit-testable.

Decisions (also in the README):
- Greedy unless the request sets `temperature` > 0.  An absent temperature is greedy on every
  build (the official clients omit it unless asked).  temperature > 0 needs a bmodel that can
  sample (lm_head returns logits, or it has a sample head); on a top-1 build it is a 400
  `sampling_unsupported`, unless the server runs with `--greedy-fallback` (then the answer is
  greedy and says so in its `tpuchat.sampling` field).
- top_p, top_k and seed only matter when sampling; repetition_penalty (an extension field) needs
  sampling too.  presence/frequency penalties other than 0, n > 1, logprobs, tools, logit_bias
  and JSON response formats are refused with 400 `unsupported_parameter`.
- Messages that do not fit the bmodel are refused (400 `context_length_exceeded`), never cut
  silently: an API client owns its history and must decide what to leave out.
- max_tokens absent: the answer may use the whole rest of the KV cache.
- Images (vision bmodels): `image_url` content parts in user messages, at most one per message.
  The model holds one image, so only the latest image is used; older ones become "[image]" in
  their message.  The image goes before the message's text (as Llama-3.2-Vision expects).
  Accepted URLs: `data:` (base64); local paths and `file://` only under the server's
  `--image-dir`; http(s) is refused (see images.py).
"""

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..chat.session import GenSettings

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4


class ApiError(Exception):
    """An error answered in OpenAI's format: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def unsupported(param: str, why: str) -> ApiError:
    return bad(f"'{param}' is not supported by this server: {why}", param, "unsupported_parameter")


@dataclass
class ChatRequest:
    messages: List[Dict[str, str]]
    settings: GenSettings
    stream: bool = False
    include_usage: bool = False
    stops: List[str] = field(default_factory=list)
    sampling: str = "greedy"  # greedy | sampled | ignored (--greedy-fallback on a top-1 build)
    prompt: Optional[str] = None  # /v1/completions: the raw prompt (messages is empty)
    return_token_ids: bool = False  # extension: the generated ids in the `tpuchat` field (as vLLM's flag)


def _number(body: dict, name: str, lo: float, hi: float, integer: bool = False) -> Optional[float]:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise bad(f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo:g} and {hi:g}, got {v!r}", name, "invalid_value")
    return v


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None:
        if m.get("tool_calls") or m.get("function_call"):
            raise unsupported("tools", "tool calls are not supported")
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for p in c:
            if isinstance(p, dict) and p.get("type") == "image_url":
                continue  # see _image_url
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise bad(f"messages[{i}].content: only text and image_url parts are supported, got {kind!r}",
                          f"messages[{i}].content", "unsupported_content")
            parts.append(p["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
              "invalid_type")


def _image_url(m: dict, i: int, role: str) -> Optional[str]:
    """The URL of a message's image_url part, if it has one (400 for more than one)."""
    c = m.get("content")
    if not isinstance(c, list):
        return None
    urls = []
    for p in c:
        if isinstance(p, dict) and p.get("type") == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url:
                raise bad(f"messages[{i}]: an image_url part needs {{\"image_url\": {{\"url\": ...}}}}",
                          f"messages[{i}].content", "invalid_type")
            urls.append(url)
    if not urls:
        return None
    if role != "user":
        raise bad(f"messages[{i}]: images go in user messages, not {role} messages", f"messages[{i}].content",
                  "invalid_value")
    if len(urls) > 1:
        raise bad(f"messages[{i}] has {len(urls)} images but the model takes one image per message",
                  f"messages[{i}].content", "too_many_images")
    return urls[0]


def parse_messages(body: dict) -> List[Dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise bad("'messages' is required and must be a list of {role, content} objects", "messages",
                  "invalid_type")
    if not msgs:
        raise bad("'messages' is empty: send at least one message", "messages", "empty_array")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role in ("tool", "function"):
            raise unsupported("tools", "tool and function messages are not supported")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of system, developer, user, assistant; got {role!r}",
                      f"messages[{i}].role", "invalid_value")
        msg = {"role": ROLES[role], "content": _content(m, i)}
        url = _image_url(m, i, ROLES[role])
        if url is not None:
            msg["image_url"] = url
        out.append(msg)
    if all(m["role"] == "system" for m in out):
        raise bad("'messages' holds only system messages: add a user message", "messages", "invalid_value")
    return out


def parse_request(body: Any, can_sample: bool, greedy_fallback: bool = False) -> ChatRequest:
    """Check a /v1/chat/completions body and turn it into messages + GenSettings."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    messages = parse_messages(body)
    return _generation(body, can_sample, greedy_fallback, ChatRequest(messages, GenSettings()))


def parse_completion(body: Any, can_sample: bool, greedy_fallback: bool = False) -> ChatRequest:
    """Check a /v1/completions body: a raw prompt (no chat template), one string.  max_tokens
    defaults to 16, as OpenAI's legacy endpoint does."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise unsupported("prompt", "send one prompt string per request (batches and token-id prompts are "
                                    "not supported)")
    if not isinstance(prompt, str) or not prompt:
        raise bad("'prompt' is required and must be a non-empty string", "prompt", "invalid_type")
    if body.get("echo"):
        raise unsupported("echo", "the answer does not repeat the prompt")
    if body.get("suffix"):
        raise unsupported("suffix", "insertion (fill-in-the-middle) is not supported")
    if body.get("best_of") not in (None, 1):
        raise unsupported("best_of", "one engine produces one answer per request (best_of must be 1)")
    req = _generation(body, can_sample, greedy_fallback, ChatRequest([], GenSettings(), prompt=prompt))
    if not req.settings.max_new_tokens:
        req.settings.max_new_tokens = 16
    return req


def _generation(body: dict, can_sample: bool, greedy_fallback: bool, req: "ChatRequest") -> "ChatRequest":
    """The parameters both endpoints share: streaming, lengths, stops, sampling."""
    # Parameters we cannot honour: refuse rather than ignore.
    n = body.get("n")
    if n not in (None, 1):
        raise unsupported("n", "one engine produces one answer per request (n must be 1)")
    for name in ("presence_penalty", "frequency_penalty"):
        v = _number(body, name, -2.0, 2.0)
        if v:
            raise unsupported(name, "use the 'repetition_penalty' extension field (with temperature > 0)")
    if body.get("logprobs") not in (None, False, 0):
        raise unsupported("logprobs", "the chip returns token ids, not log-probabilities")
    if body.get("top_logprobs"):
        raise unsupported("top_logprobs", "the chip returns token ids, not log-probabilities")
    if body.get("logit_bias"):
        raise unsupported("logit_bias", "logits are not adjustable on the device")
    for name in ("tools", "functions"):
        if body.get(name):
            raise unsupported(name, "tool calling is not supported")
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") not in (None, "text"):
        raise unsupported("response_format", "only plain text answers are supported")
    if body.get("audio") or body.get("modalities") not in (None, ["text"]):
        raise unsupported("modalities", "only text is supported")

    rti = body.get("return_token_ids", False)
    if not isinstance(rti, bool):
        raise bad("'return_token_ids' must be true or false", "return_token_ids", "invalid_type")
    req.return_token_ids = rti
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("'stream' must be true or false", "stream", "invalid_type")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict):
            raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
        include_usage = bool(so.get("include_usage"))

    max_tokens = _number(body, "max_completion_tokens", 1, 1 << 30, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, 1 << 30, integer=True)

    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad(f"'stop' takes at most {MAX_STOPS} strings", "stop", "invalid_value")
    stops = [s for s in stops if s]

    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    top_k = _number(body, "top_k", 0, 1 << 20, integer=True)
    rep = _number(body, "repetition_penalty", 0.01, 10.0)
    seed = _number(body, "seed", -(1 << 63), (1 << 64) - 1, integer=True)

    settings = GenSettings(max_new_tokens=int(max_tokens) if max_tokens else 0, stop=[])
    sampling = "greedy"
    if temperature:
        if can_sample:
            sampling = "sampled"
            settings.sample = True
            settings.temperature = float(temperature)
            settings.top_p = float(top_p) if top_p is not None else 1.0
            settings.top_k = int(top_k or 0)
            settings.repetition_penalty = float(rep) if rep is not None else 1.0
            settings.seed = int(seed) if seed is not None else None
        elif greedy_fallback:
            sampling = "ignored"
        else:
            raise bad(
                f"temperature={temperature:g} asks for sampling, but this bmodel computes only the top-1 token "
                "on the chip (compile it with llm_convert --do_sample to sample); send temperature 0 or "
                "leave it out for greedy answers, or start the server with --greedy-fallback",
                "temperature", "sampling_unsupported")
    elif rep not in (None, 1, 1.0):
        raise bad("'repetition_penalty' applies when sampling: set temperature > 0 (on a bmodel compiled "
                  "with --do_sample)", "repetition_penalty", "invalid_value")
    req.settings, req.stream, req.include_usage, req.stops, req.sampling = (
        settings, bool(stream), include_usage, stops, sampling)
    return req


# -- responses ---------------------------------------------------------------------------------

FINISH = {"eos": "stop", "stop": "stop", "max_tokens": "length", "context_full": "length"}


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def timings(stats: dict, queue_s: float, sampling: str) -> dict:
    """The extra `tpuchat` field every answer carries."""
    keys = ("ftl_s", "tokens_per_s", "prompt_tokens", "new_tokens", "device_ms_per_token",
            "host_us_per_token", "stop_reason", "reused_tokens")
    out = {k: stats[k] for k in keys if k in stats}
    for k in ("ftl_s", "tokens_per_s", "device_ms_per_token", "host_us_per_token"):
        if isinstance(out.get(k), float):
            out[k] = round(out[k], 4)
    out["queue_s"] = round(queue_s, 4)
    out["sampling"] = sampling
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish: str, use: dict, extra: dict) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": finish}],
        "usage": use,
        "tpuchat": extra,
    }


def chunk(cid: str, created: int, model: str, delta: Optional[dict], finish: Optional[str] = None,
          use: Optional[dict] = None, extra: Optional[dict] = None, include_usage: bool = False) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "system_fingerprint": None,
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]}
    if include_usage:
        out["usage"] = use  # null on every chunk but the last, as OpenAI does
    if extra is not None:
        out["tpuchat"] = extra
    return out


def models_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                        "owned_by": "tpuchat"}]}


# -- /v1/completions (raw prompt) ----------------------------------------------------------------


def new_cmpl_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


def text_completion(cid: str, model: str, text: Optional[str], finish: Optional[str], use: Optional[dict] = None,
                    extra: Optional[dict] = None, created: Optional[int] = None) -> dict:
    """A whole answer, or (text None: no choices) the usage chunk of a stream; a stream's chunks
    have the same shape as the whole answer."""
    out = {"id": cid, "object": "text_completion", "created": created or int(time.time()), "model": model,
           "system_fingerprint": None,
           "choices": [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                                "finish_reason": finish}]}
    if use is not None:
        out["usage"] = use
    if extra is not None:
        out["tpuchat"] = extra
    return out
