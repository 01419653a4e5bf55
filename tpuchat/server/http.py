"""`tpuchat serve`: an OpenAI-compatible HTTP API over one engine or several (one per device group).

Stack: the standard library's ThreadingHTTPServer (no new dependency, a few MB of RAM, starts in
well under a second on a Cortex-A53).  One thread per connection parses and checks the request
and tokenizes the prompt; one thread per engine (see scheduler.py) runs the generations, in
arrival order, each on an idle engine.  While a handler waits for or streams its answer it
watches its socket, so a client that goes away cancels its generation at once.

Endpoints: GET /health, GET /metrics (Prometheus), GET /v1/info (model facts), GET /v1/models,
GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions (a raw prompt) (all also
without the /v1 prefix).  Streaming answers are Server-Sent Events sent with HTTP/1.1 chunked
encoding, so keep-alive connections work.
"""

import hmac
import ipaddress
import json
import logging
import queue
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

from ..chat.session import Delta, Finished
from ..errors import ContextFull, EngineCrashed, PromptTooLong, TpuchatError
from ..text.stops import StopStringMatcher
from . import protocol as P
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .scheduler import END, Job, QueueFull, Scheduler

log = logging.getLogger("tpuchat.server")

MAX_BODY = 8 << 20  # bytes
POLL_S = 0.05  # how often a waiting handler checks that its client is still there


class ClientGone(Exception):
    pass


class BindRefused(TpuchatError):
    """A public address without an API key (a usage error)."""

    exit_code = 2


# -- bind policy -----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    if host in ("", "*"):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise TpuchatError(f"cannot resolve --host {host!r}: {e}") from None
    try:
        return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
    except ValueError:
        return False


def check_bind(host: str, api_key: Optional[str], insecure: bool) -> None:
    if is_loopback(host) or api_key or insecure:
        return
    raise BindRefused(
        f"refusing to listen on {host} without an API key: anyone who can reach this machine could use "
        "the model. Set --api-key KEY (or TPUCHAT_API_KEY), or pass --insecure if the network is yours alone"
    )


def model_can_sample(desc) -> bool:
    return desc.can_sample


# -- server ----------------------------------------------------------------------------------------


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, api_key: Optional[str] = None, max_waiting: int = 8,
                 greedy_fallback: bool = False, access_log: bool = True, image_dir: Optional[str] = None):
        from .images import check_image_dir

        real_image_dir = check_image_dir(image_dir)  # before binding: a bad dir leaves no socket behind
        host = address[0]
        try:
            fam = socket.getaddrinfo(host or None, address[1], type=socket.SOCK_STREAM,
                                     flags=socket.AI_PASSIVE)[0][0]
        except socket.gaierror as e:
            raise TpuchatError(f"cannot resolve --host {host!r}: {e}") from None
        self.address_family = fam
        try:
            super().__init__(address, Handler)
        except OSError as e:
            raise TpuchatError(f"cannot listen on {host}:{address[1]}: {e.strerror or e}") from None
        self.api_key = api_key or None
        self.max_waiting = max_waiting
        self.greedy_fallback = greedy_fallback
        self.access_log = access_log
        self.model = None  # the first engine's model: tokenizer and description (all engines are alike)
        self.models: list = []
        self.scheduler: Optional[Scheduler] = None
        self.metrics = Metrics()
        self.model_id = ""
        self.created = int(time.time())
        self.can_sample = False
        self.default_system: Optional[str] = None  # --prefix-file: used when a request has no system message
        self._tok_lock = threading.Lock()
        self.image_dir = real_image_dir  # allow-list for local image paths (None: refuse them)

    def attach(self, model, model_id: Optional[str] = None, labels: Optional[Sequence[str]] = None) -> None:
        """Serve `model` (a ChatModel, or a test double with the same surface), or a list of them
        (one engine each: the same bmodel on different devices); `labels` name their devices."""
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        self.model, self.models = models[0], models
        self.model_id = model_id or model_name(getattr(self.model, "model_path", None) or self.model.name)
        self.can_sample = model_can_sample(self.model.desc)
        self.scheduler = Scheduler(models, self.max_waiting, labels, self.metrics)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/v1"

    def _system(self, messages) -> Optional[str]:
        """--prefix-file's document for requests that carry no system message."""
        if self.default_system and not any(m.get("role") == "system" for m in messages):
            return self.default_system
        return None

    def encode(self, messages) -> list:
        with self._tok_lock:
            return self.model.tok.encode_chat(messages, system=self._system(messages))

    def encode_raw(self, prompt: str) -> list:
        with self._tok_lock:
            return self.model.tok.encode(prompt)

    def encode_with_image(self, messages) -> tuple:
        """Prompt ids and the engine's image arguments for messages of which some carry an
        `image_url` (see protocol.py); P.ApiError for anything the model cannot take."""
        from ..chat.conversation import Attachment, Message, template_messages
        from ..vision.prompt import find_image_pos
        from .images import load_image_url

        model = self.model
        if not model.desc.has_vision:
            raise P.bad(f"the model {self.model_id} is text-only: it cannot take images; send text only",
                        "messages", "vision_unsupported")
        last = max(i for i, m in enumerate(messages) if "image_url" in m)
        msgs = []
        for i, m in enumerate(messages):
            att = None
            if "image_url" in m:
                if i == last:
                    img = load_image_url(m["image_url"], self.image_dir, f"messages[{i}].content")
                    att = Attachment.from_loaded(img)
                else:  # an older image: the model holds one, this one becomes "[image]"
                    att = Attachment(None, "", "image", gone=True)
            msgs.append(Message(m["role"], m["content"], attachment=att))
        with self._tok_lock:
            ids = model.tok.encode_chat(template_messages(msgs)[0], system=self._system(messages))
            try:
                image = model.image_inputs(msgs[last].attachment)
                pos = find_image_pos(ids, model.image_token_id)
            except TpuchatError as e:
                raise P.bad(str(e), f"messages[{last}].content", "invalid_image") from None
        return ids, {"image": image, "image_pos": pos}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.server_close()


def model_name(path) -> str:
    name = Path(str(path)).name
    return name[: -len(".bmodel")] if name.endswith(".bmodel") else name


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tpuchat"
    timeout = 120  # an idle keep-alive connection is closed after this
    server: ApiServer

    # -- plumbing ----------------------------------------------------------------------------
    def version_string(self):
        return self.server_version

    def send_response(self, code, message=None):
        self.status = code  # for /metrics
        super().send_response(code, message)

    def log_message(self, fmt, *args):
        if self.server.access_log:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def send_error(self, code, message=None, explain=None):
        """Errors raised by http.server itself (bad request line, unknown method) as JSON."""
        self.close_connection = True
        try:
            self._json(code, P.ApiError(code, message or self.responses.get(code, ("error",))[0]).body())
        except OSError:
            pass

    def _json(self, status: int, obj: dict, headers: Optional[dict] = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, e: P.ApiError) -> None:
        self._json(e.status, e.body(), e.headers)

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path[3:] if path.startswith("/v1/") or path == "/v1" else path

    def _check_auth(self) -> None:
        key = self.server.api_key
        if not key:
            return
        got = self.headers.get("Authorization", "")
        scheme, _, token = got.partition(" ")
        if not got:
            raise P.ApiError(401, "no API key: send the header 'Authorization: Bearer YOUR_KEY'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise P.ApiError(401, "incorrect API key", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise P.ApiError(411, "send the body with a Content-Length header (chunked bodies are not accepted)")
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise P.bad("bad Content-Length header") from None
        if n > MAX_BODY:
            self.close_connection = True
            raise P.ApiError(413, f"the request body is larger than {MAX_BODY >> 20} MB")
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise P.bad(f"could not parse the JSON body of the request: {e}", code="invalid_json") from None

    # -- methods -----------------------------------------------------------------------------
    def do_GET(self):
        route = self._route()
        try:
            if route == "/health":
                st = self.server.scheduler.status() if self.server.scheduler else {}
                if self.server.default_system:
                    pinned = getattr(self.server.model, "pinned", None) or {}
                    st = dict(st, shared_prefix_tokens=pinned.get("tokens", 0))
                self._json(200, dict(status="ok" if self.server.scheduler else "loading", **st))
                return
            self._check_auth()
            if route == "/metrics":
                sched = self.server.scheduler
                text = self.server.metrics.render(sched.status() if sched else None).encode()
                self.send_response(200)
                self.send_header("Content-Type", METRICS_TYPE)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(text)
            elif route == "/info":
                self._json(200, self._info())
            elif route == "/models":
                self._json(200, P.models_list(self.server.model_id, self.server.created))
            elif route.startswith("/models/"):
                self._check_model(route[len("/models/"):], param=None)
                self._json(200, P.models_list(self.server.model_id, self.server.created)["data"][0])
            else:
                raise P.ApiError(404, f"no such endpoint: GET {self.path}", code="unknown_url")
        except P.ApiError as e:
            self._error(e)

    do_HEAD = do_GET

    def do_POST(self):
        route = self._route()
        self.status = 0
        try:
            self._check_auth()
            if route == "/chat/completions":
                self._chat(self._body())
            elif route == "/completions":
                self._text_completion(self._body())
            else:
                self._body()  # keep the connection usable
                raise P.ApiError(404, f"no such endpoint: POST {self.path} (this server has /v1/chat/completions "
                                      "and /v1/completions)", code="unknown_url")
        except P.ApiError as e:
            self._error(e)
        except ClientGone:
            self.close_connection = True
            self.status = 499  # nginx's "client closed request"
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self.status = 499
        finally:
            if route in ("/chat/completions", "/completions"):
                self.server.metrics.request_done(route, self.status)

    def _info(self) -> dict:
        """What `tpuchat info --json` shows, plus the server's engines."""
        srv = self.server
        if srv.scheduler is None:
            raise P.ApiError(503, "the model is still loading", "server_error")
        engines = [{"devices": e["devices"], "state": e["state"]} for e in srv.scheduler.status()["engines"]]
        return {"id": srv.model_id, "model": srv.model.desc.to_dict(), "can_sample": srv.can_sample, "engines": engines}

    def do_OPTIONS(self):
        self._error(P.ApiError(405, "method not allowed"))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS

    # -- chat completions --------------------------------------------------------------------
    def _check_model(self, name, param: Optional[str] = "model") -> None:
        if name is None:
            return  # lenient: the one model this server has
        if not isinstance(name, str) or name not in (self.server.model_id, self.server.model_id + ".bmodel"):
            raise P.ApiError(404, f"the model {name!r} does not exist: this server serves "
                                  f"{self.server.model_id!r}", param=param, code="model_not_found")

    def _chat(self, body) -> None:
        srv = self.server
        if srv.scheduler is None:
            raise P.ApiError(503, "the model is still loading", "server_error")
        if isinstance(body, dict):
            self._check_model(body.get("model"))
        req = P.parse_request(body, srv.can_sample, srv.greedy_fallback)
        image_args = {}
        try:
            if any("image_url" in m for m in req.messages):
                ids, image_args = srv.encode_with_image(req.messages)
            else:
                ids = srv.encode(req.messages)
        except P.ApiError:
            raise
        except TpuchatError as e:
            raise P.bad(str(e), "messages") from None
        except Exception as e:  # the chat template refused the messages (e.g. role order)
            raise P.bad(f"the model's chat template refused these messages: {e}", "messages") from None
        self._answer(req, ids, image_args, "messages", self._stream, self._complete)

    def _text_completion(self, body) -> None:
        srv = self.server
        if srv.scheduler is None:
            raise P.ApiError(503, "the model is still loading", "server_error")
        if isinstance(body, dict):
            self._check_model(body.get("model"))
        req = P.parse_completion(body, srv.can_sample, srv.greedy_fallback)
        try:
            ids = srv.encode_raw(req.prompt)
        except TpuchatError as e:
            raise P.bad(str(e), "prompt") from None
        self._answer(req, ids, {}, "prompt", self._stream_text, self._complete_text)

    def _answer(self, req: P.ChatRequest, ids: list, image_args: dict, param: str, stream, complete) -> None:
        """Check the prompt fits, queue it, and answer with stream(job, req, n) or complete(...)."""
        srv = self.server
        desc = srv.model.desc
        seq_len, kv_len = desc.seq_len, desc.kv_len
        limit = min(seq_len, kv_len - 1)
        if not ids:
            raise P.bad("the prompt is empty after tokenization", param, "invalid_value")
        if len(ids) > limit:
            what = ("your messages resulted in {} tokens. Shorten or drop old messages" if param == "messages"
                    else "your prompt has {} tokens. Shorten it")
            raise P.bad(
                f"this model's maximum context length is {limit} prompt tokens (prefill length {seq_len}, "
                f"KV length {kv_len}); " + what.format(len(ids)),
                param, "context_length_exceeded")
        room = kv_len - len(ids)
        req.settings.max_new_tokens = min(req.settings.max_new_tokens or room, room)
        job = Job(ids, req.settings, **image_args)
        try:
            srv.scheduler.submit(job)
        except QueueFull as e:
            raise P.ApiError(429, f"the server is busy: {e}; retry later", "rate_limit_error",
                             code="queue_full", headers={"Retry-After": "2"}) from None
        try:
            if req.stream:
                stream(job, req, len(ids))
            else:
                complete(job, req, len(ids))
        except (ClientGone, OSError):
            srv.scheduler.cancel(job)
            raise ClientGone() from None
        finally:
            if not job.cancelled.is_set() and job.started is None:
                srv.scheduler.cancel(job)

    def _client_gone(self) -> bool:
        sock = self.connection
        try:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _events(self, job: Job) -> Iterator[object]:
        while True:
            try:
                ev = job.events.get(timeout=POLL_S)
            except queue.Empty:
                if self._client_gone():
                    raise ClientGone()
                continue
            if ev is END:
                return
            yield ev

    def _run(self, job: Job, req: P.ChatRequest, on_text: Callable[[str], None]):
        """Consume the job's events; returns (finish_reason, stats).  Stop strings cut the text
        and stop the generation."""
        matcher = StopStringMatcher(req.stops) if req.stops else None
        stats, finish, error = {}, None, None
        for ev in self._events(job):
            if isinstance(ev, Delta):
                if matcher is None:
                    on_text(ev.text)
                elif not matcher.stopped:
                    text = matcher.push(ev.text)
                    if text:
                        on_text(text)
                    if matcher.stopped:
                        finish = "stop"
                        self.server.scheduler.cancel(job, "stop")
            elif isinstance(ev, Finished):
                stats = dict(ev.stats.to_dict(), token_ids=list(ev.token_ids))
                if matcher is not None and not matcher.stopped:
                    rest = matcher.flush()
                    if rest:
                        on_text(rest)
                if finish is None:
                    finish = P.FINISH.get(ev.reason, "stop")
            elif isinstance(ev, BaseException):
                error = ev
        if error is not None:
            raise engine_error(error)
        if finish is None:  # the server is shutting down
            raise P.ApiError(503, "the server is shutting down", "server_error")
        self.server.metrics.generation_done(stats, job.queue_s)
        return finish, stats

    def _extra(self, job: Job, req: P.ChatRequest, stats: dict) -> dict:
        out = P.timings(stats, job.queue_s, req.sampling)
        if job.engine is not None:
            out["engine"] = job.engine  # index in /health's engines
        if req.return_token_ids:
            out["token_ids"] = stats.get("token_ids", [])
        return out

    def _complete(self, job: Job, req: P.ChatRequest, n_prompt: int) -> None:
        parts = []
        finish, stats = self._run(job, req, parts.append)
        use = P.usage(n_prompt, int(stats.get("new_tokens", 0)))
        self._json(200, P.completion(P.new_id(), self.server.model_id, "".join(parts), finish, use,
                                     self._extra(job, req, stats)))

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _sse(self, obj) -> None:
        text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        self._chunk(b"data: " + text.encode() + b"\n\n")

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()

    def _stream(self, job: Job, req: P.ChatRequest, n_prompt: int) -> None:
        cid, created, model = P.new_id(), int(time.time()), self.server.model_id
        self._start_sse()
        iu = req.include_usage
        self._sse(P.chunk(cid, created, model, {"role": "assistant", "content": ""}, include_usage=iu))
        try:
            finish, stats = self._run(
                job, req, lambda t: self._sse(P.chunk(cid, created, model, {"content": t}, include_usage=iu)))
        except P.ApiError as e:
            self.status = e.status
            self._sse(e.body())
            self._chunk(b"")
            return
        self._sse(P.chunk(cid, created, model, {}, finish, extra=self._extra(job, req, stats), include_usage=iu))
        if iu:
            self._sse(P.chunk(cid, created, model, None, use=P.usage(n_prompt, int(stats.get("new_tokens", 0))),
                              include_usage=True))
        self._sse("[DONE]")
        self._chunk(b"")


    # -- text completions (raw prompt) -------------------------------------------------------
    def _complete_text(self, job: Job, req: P.ChatRequest, n_prompt: int) -> None:
        parts = []
        finish, stats = self._run(job, req, parts.append)
        use = P.usage(n_prompt, int(stats.get("new_tokens", 0)))
        self._json(200, P.text_completion(P.new_cmpl_id(), self.server.model_id, "".join(parts), finish, use,
                                          self._extra(job, req, stats)))

    def _stream_text(self, job: Job, req: P.ChatRequest, n_prompt: int) -> None:
        cid, created, model = P.new_cmpl_id(), int(time.time()), self.server.model_id
        self._start_sse()
        try:
            finish, stats = self._run(
                job, req, lambda t: self._sse(P.text_completion(cid, model, t, None, created=created)))
        except P.ApiError as e:
            self.status = e.status
            self._sse(e.body())
            self._chunk(b"")
            return
        self._sse(P.text_completion(cid, model, "", finish, extra=self._extra(job, req, stats), created=created))
        if req.include_usage:
            self._sse(P.text_completion(cid, model, None, None, created=created,
                                        use=P.usage(n_prompt, int(stats.get("new_tokens", 0)))))
        self._sse("[DONE]")
        self._chunk(b"")


def engine_error(e: BaseException) -> P.ApiError:
    if isinstance(e, PromptTooLong):
        return P.bad(str(e), "messages", "context_length_exceeded")
    if isinstance(e, ContextFull):
        return P.bad(str(e), "messages", "context_length_exceeded")
    if isinstance(e, EngineCrashed):
        return P.ApiError(500, f"the engine failed: {e} (it is being restarted; retry)", "server_error",
                          code="engine_crashed")
    if isinstance(e, TpuchatError):
        return P.bad(str(e))
    log.exception("internal error", exc_info=e)
    return P.ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error")


# -- entry points ----------------------------------------------------------------------------------


def make_server(model, host: str = "127.0.0.1", port: int = 0, api_key: Optional[str] = None,
                max_waiting: int = 8, greedy_fallback: bool = False, model_id: Optional[str] = None,
                access_log: bool = False, image_dir: Optional[str] = None,
                labels: Optional[Sequence[str]] = None) -> ApiServer:
    """A server bound and attached to an already open model, or a list of them (one engine
    each), not yet serving: for tests and embedding.  Call serve_forever() (e.g. in a thread),
    then shutdown() and close()."""
    srv = ApiServer((host, port), api_key, max_waiting, greedy_fallback, access_log, image_dir)
    srv.attach(model, model_id, labels)
    return srv


def device_groups(devids) -> List[List[int]]:
    """[0] or [0, 1] (one engine on these devices), or [[0], [1]] / [[0, 1], [2, 3]] (one engine
    per list) -> one list of device ids per engine."""
    if all(isinstance(d, int) for d in devids):
        return [list(devids)]
    return [list(g) for g in devids]


def open_engines(model_path: str, groups: Sequence[Sequence[int]], lib_dir: Optional[str],
                 tokenizer_dir: Optional[str], shared_prefix: Optional[str], say: Callable[[str], None]) -> list:
    """One ChatModel (engine worker process) per device group, opened in parallel; each engine
    logs to its own file.  The one place that knows how engines are made (tests pass their own)."""
    from ..chat.session import ModelSpec, open_chat_model
    from ..paths import engine_log_path
    from ..runtime.client import EngineClient

    models: list = [None] * len(groups)
    errors: list = []

    def open_one(i):
        try:
            log_path = engine_log_path()
            if len(groups) > 1:
                log_path = log_path.with_name(f"engine-dev{'-'.join(map(str, groups[i]))}.log")
            spec = ModelSpec(model_path, groups[i], lib_dir, tokenizer_dir, shared_prefix or None)
            m = models[i] = open_chat_model(spec, client=EngineClient(log_path))
            if shared_prefix:
                p = m.pinned
                if i == 0:
                    say(f"tpuchat serve: shared prefix of {p['tokens']} tokens kept on the device "
                        f"(computed in {p['seconds']:.2f} s); requests without a system message get it")
        except BaseException as e:
            errors.append(e)

    # The first alone: its tokenizer's lazy imports (transformers) must not race in threads.
    open_one(0)
    rest = range(1, len(groups)) if not errors else ()
    threads = [threading.Thread(target=open_one, args=(i,), daemon=True) for i in rest]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for m in models:
            if m is not None:
                m.close()
        raise errors[0]
    return models


def serve(model_path: str, devids: Sequence = (0,), lib_dir: Optional[str] = None,
          tokenizer_dir: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: Optional[str] = None, insecure: bool = False, max_waiting: int = 8,
          model_id: Optional[str] = None, greedy_fallback: bool = False, shared_prefix: Optional[str] = None,
          say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
          image_dir: Optional[str] = None) -> int:
    """`tpuchat serve`: check the bind policy, listen, open the model, serve until SIGINT/SIGTERM.

    devids: one engine's device ids ([0] or [0, 1]), or one list per engine ([[0], [1], [2]]).
    shared_prefix: a system prompt (e.g. a long document) computed once and kept on the device;
    requests without a system message get it, and every request starting with it reuses it."""
    check_bind(host, api_key, insecure)
    groups = device_groups(devids)
    srv = ApiServer((host, port), api_key, max_waiting, greedy_fallback, image_dir=image_dir)
    models: list = []
    try:
        models = open_engines(model_path, groups, lib_dir, tokenizer_dir, shared_prefix, say)
        if shared_prefix:
            srv.default_system = shared_prefix
        labels = [",".join(map(str, g)) for g in groups]
        seen = [d for g in groups for d in g]
        if len(set(seen)) != len(seen):
            say("tpuchat serve: note: several engines share a device; each holds its own copy of the model "
                "and they take turns on the chip (useful on the simulator, where each has its own C model)")
        srv.attach(models, model_id, labels)
        d = srv.model.desc
        engines = f"{len(models)} engines (devices {' | '.join(labels)})" if len(models) > 1 else \
            f"devices {labels[0]}"
        say(f"tpuchat serve: model {srv.model_id} (prefill {d.seq_len}, KV {d.kv_len}, "
            f"{'can sample' if srv.can_sample else 'greedy only'}); {engines}; "
            f"auth {'on' if srv.api_key else 'off'}; queue {max_waiting}"
            + (f"; images {'from data: URLs and ' + srv.image_dir if srv.image_dir else 'from data: URLs'}"
               if d.has_vision else ""))
        say(f"tpuchat serve: listening on {srv.url}")

        def _term(signum, frame):
            raise KeyboardInterrupt()

        try:
            signal.signal(signal.SIGTERM, _term)
        except ValueError:  # not the main thread
            pass
        try:
            srv.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            say("tpuchat serve: stopping")
    finally:
        srv.close()
        for m in models:
            m.close()
    return 0
