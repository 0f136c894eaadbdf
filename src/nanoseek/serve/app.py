"""The FastAPI app: OpenAI/DeepSeek-compatible endpoints over one engine, plus /health, /metrics and the chat page.

    app = create_app(nanoseek.LLM("model_dir"), ServeConfig(served_model_name="nanoseek"))
    uvicorn.run(app, host="127.0.0.1", port=8000)              # or `nanoseek serve model_dir`

Every caller mistake is answered in OpenAI's error shape with the right status (400 bad JSON / types / roles /
context overflow, 401 key, 404 model or route, 405 method, 413 body size, 429/503 + Retry-After when full or
stopping); a server fault is a 500 in the same shape without a traceback. The server keeps serving after each.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..infer.sampling import SamplingParams
from ..reasoning import ReasoningParser
from . import handlers as h
from .metrics import Metrics
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, chat_messages, context_overflow,
                       error_body, model_card, new_id, now, parse)
from .worker import EngineError, EngineWorker

log = logging.getLogger("nanoseek.serve")

# chat_template_kwargs may set template variables (e.g. `thinking`), never apply_chat_template's own arguments
_RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "documents", "add_generation_prompt", "tokenize",
                             "continue_final_message", "chat_template", "bos_token", "eos_token", "pad_token",
                             "unk_token"}


@dataclass
class ServeConfig:
    served_model_name: str = "nanoseek"
    api_key: str | None = None
    max_queue: int = 256  # sequences that may wait beyond a full batch; more are refused with 429
    max_body_bytes: int = 4 << 20
    reasoning_parser: bool = True  # split `<think>...</think>` into reasoning_content
    keepalive_s: float = 15.0  # SSE `: keep-alive` comment after this long without output
    drain_timeout_s: float = 10.0  # on shutdown, in-flight requests get this long to finish before an abort
    # Browser protection (issue 17 item 5). A request whose Origin is another site (a page in the user's browser
    # driving the server) is refused unless listed here ("*": any); one whose Host is a domain name that is not
    # localhost (DNS rebinding) is refused unless listed in allowed_hosts ("*": any). IP literals always pass.
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Slow clients (issue 17 item 4): a request's header block must arrive within header_timeout_s of the connection
    # opening or of the request's first byte on a keep-alive connection (else 408 and closed; see header_timeout.py);
    # a request body must arrive within read_timeout_s (else 408); at most max_connections connections are open at
    # once (uvicorn answers 503 beyond); idle keep-alive connections close after keepalive_timeout_s.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 65536  # a longer header block: 431 and closed (nginx allows 32 KiB, h11 16 KiB)
    read_timeout_s: float = 30.0
    max_connections: int = 1000
    keepalive_timeout_s: float = 5.0
    # Tokenizing (issue 17 item 3): chat templates are rendered and prompts tokenized in the server's own pool of
    # tokenizer_threads threads, off the event loop and apart from Python's default executor; at most
    # tokenizer_queue requests wait for a thread beyond those being tokenized (room for a burst of clients arriving
    # together: a short prompt takes well under a millisecond), more are refused with 429.
    tokenizer_threads: int = 2
    tokenizer_queue: int = 64


class _Stream(StreamingResponse):
    """An SSE response that aborts its engine requests however it ends (done, client gone, server cancelled)."""

    def __init__(self, content: Any, handle: Any):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.handle = handle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.abort()


class _CountRequests:
    """ASGI middleware: counts answered requests by endpoint and status for /metrics."""

    def __init__(self, app: Any, metrics: Metrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "/v1/models/{model}" if path.startswith("/v1/models/") \
            else "other"
        status = {"code": 499}  # nginx's "client closed request" when no response started

        async def send_counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if status["code"] == 499:
                status["code"] = 500  # the error handler's answer is sent outside this middleware
            raise
        finally:
            self.metrics.count_request(endpoint, status["code"])


class _BrowserGuard:
    """ASGI middleware: 403 for cross-site browser requests (an Origin other than the server's own and not allowed)
    and for DNS-rebinding Host names (a domain name other than localhost and not allowed). Clients that are not
    browsers send no Origin and use the address they connect to, so they pass."""

    def __init__(self, app: Any, allowed_origins: tuple[str, ...], allowed_hosts: tuple[str, ...]):
        self.app = app
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.hosts = {h.lower() for h in allowed_hosts}

    def _host_ok(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if "*" in self.hosts or name in self.hosts or name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        origin = headers.get("origin")
        reason = None
        if host and not self._host_ok(host):
            reason = (f"Host {host!r} is not allowed (DNS rebinding protection); start the server with "
                      "--allowed-hosts to accept it")
        elif origin is not None and "*" not in self.origins:
            o = origin.rstrip("/").lower()
            if o == "null":
                reason = "requests from an opaque origin (Origin: null) are not allowed"
            elif o.split("://", 1)[-1] != host.lower() and o not in self.origins:  # neither same-origin nor allowed
                reason = (f"cross-origin requests from {origin!r} are not allowed; start the server with "
                          "--allowed-origins to accept them")
        if reason is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {"message": reason, "type": "forbidden", "param": None,
                                     "code": "forbidden"}}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _json_body(model: Any) -> dict[str, Any]:
    """The OpenAPI requestBody of a route whose handler parses `model` from the JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _load_page() -> str:
    return resources.files("nanoseek.serve").joinpath("static/index.html").read_text(encoding="utf-8")


# Deepest JSON a request may hold: chat messages with content parts and tool schemas need well under 20 levels.
MAX_JSON_DEPTH = 32


async def read_json(request: Request, limit: int, timeout_s: float | None = None) -> Any:
    """The body as JSON: 413 past `limit` bytes (read no further than a bounded drain), 408 when it has not arrived
    within `timeout_s`, 400 if not JSON."""
    try:
        return await asyncio.wait_for(_read_json(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(408, f"The request body did not arrive within {timeout_s:g} s.",
                       code="request_timeout") from None


async def _read_json(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    too_big = APIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise APIError(400, "Invalid Content-Length header.") from None
        if declared > limit:
            if declared <= 8 * limit:  # read and drop it, so the client sees the 413 rather than a reset
                async for _ in request.stream():
                    pass
            raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    if not body:
        raise APIError(400, "We could not parse the JSON body of your request: the body is empty. (HINT: send "
                            "a JSON object with Content-Type: application/json.)")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")
    try:
        data = json.loads(bytes(body), parse_constant=no_constants)
    except RecursionError:  # the parser's own recursion: deeper than anything we accept anyway
        raise APIError(400, f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except ValueError as e:
        raise APIError(400, f"We could not parse the JSON body of your request. ({type(e).__name__}: "
                            f"{str(e)[:200]}) (HINT: this likely means you aren't using your HTTP library "
                            "correctly. The OpenAI API expects a JSON payload.)") from None
    if json_depth(data) > MAX_JSON_DEPTH:  # rendering and validating deeper values recurse past Python's limit
        raise APIError(400, f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.")
    return data


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, `[]` and `{}` are 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            d += 1
            deepest = max(deepest, d)
            stack.extend((x, d) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


class TokenizerPool:
    """The server's own bounded pool for tokenizer work (chat-template rendering, encoding, decoding echoed ids).
    `threads` run at once and at most `queue` more requests wait; `run` refuses the next with 429 + Retry-After.
    A slot is held until the work itself ends (not when its caller gives up), so abandoned work still counts.
    `run` is called from the event loop only; `start`/`shutdown` with the app's lifespan."""

    def __init__(self, threads: int, queue: int):
        if threads < 1 or queue < 0:
            raise ValueError(f"tokenizer pool: threads must be >= 1 and queue >= 0 (got {threads}, {queue})")
        self.threads, self.queue = threads, queue
        self.in_use = 0  # requests running or waiting in the pool (event-loop thread only)
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nanoseek-tokenizer")

    def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:  # running work ends on its own; nobody waits for what has not started
            pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Any) -> Any:
        if self._pool is None:
            raise APIError(503, "The server is not accepting requests (starting, shutting down or failed). "
                                "Retry later.", code="service_unavailable", headers={"Retry-After": "1"})
        if self.in_use >= self.threads + self.queue:
            raise APIError(429, f"The server is overloaded: {self.in_use} requests are being tokenized or wait "
                                f"for it ({self.threads} at once + {self.queue} waiting). Retry later.",
                           code="queue_full", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        self.in_use += 1

        def release() -> None:
            self.in_use -= 1

        def done(_: Any) -> None:  # in a pool thread, or here when cancelled before it ran
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(release)
        try:
            future = self._pool.submit(fn)
        except RuntimeError:  # shut down meanwhile
            self.in_use -= 1
            raise APIError(503, "The server is shutting down. Retry later.", code="service_unavailable",
                           headers={"Retry-After": "1"}) from None
        future.add_done_callback(done)
        return await asyncio.wrap_future(future)


def create_app(llm: Any, config: ServeConfig | None = None) -> FastAPI:
    """The app over `llm` (a nanoseek.LLM). The engine thread starts with the app's lifespan and stops (draining
    in-flight requests) when the server shuts down."""
    cfg = config or ServeConfig()
    engine = llm.engine
    tok = engine.tokenizer
    if tok is not None and getattr(tok, "chat_template", None):
        try:  # a template that fails on the simplest conversation would fail every request: refuse the model now
            tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
        except ValueError as e:
            raise ValueError(f"the model's chat template cannot render a one-message conversation ({e}); fix its "
                             "tokenizer_config.json or chat_template.jinja") from None
    metrics = Metrics(cfg.served_model_name)
    worker = EngineWorker(engine, metrics, max_queue=cfg.max_queue)
    tokenizer_pool = TokenizerPool(cfg.tokenizer_threads, cfg.tokenizer_queue)
    created = now()
    think_ids = engine.think_ids
    # keys are compared as SHA-256 digests in constant time: neither the content nor the length leaks by timing
    api_key = hashlib.sha256(cfg.api_key.encode()).digest() if cfg.api_key else None
    page = _load_page()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        tokenizer_pool.start()
        worker.start()
        log.info("serving %s (max_model_len %d, max_num_seqs %d, max_queue %d)", cfg.served_model_name,
                 engine.max_model_len, worker.max_num_seqs, cfg.max_queue)
        try:
            yield
        finally:
            try:
                await asyncio.to_thread(worker.shutdown, cfg.drain_timeout_s)
            finally:
                tokenizer_pool.shutdown()

    app = FastAPI(title="nanoseek", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")

    def openapi() -> dict[str, Any]:
        """FastAPI's spec of the routes, with the request bodies (the handlers parse them themselves, so FastAPI
        cannot see them) from the pydantic models, for clients and API fuzzers."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi
            spec = get_openapi(title="nanoseek", version="1", routes=app.routes,
                               description="OpenAI/DeepSeek-compatible API of a nanoseek model")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatCompletionRequest, CompletionRequest):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(js.pop("$defs", {}))
                schemas[model.__name__] = js
            if cfg.api_key:
                spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                spec["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]
    app.state.worker = worker
    app.state.tokenizer_pool = tokenizer_pool
    app.state.metrics = metrics
    app.state.config = cfg
    app.state.llm = llm

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            msg, code = f"Invalid URL ({request.method} {request.url.path})", "unknown_url"
        elif e.status_code == 405:
            msg, code = f"Method {request.method} is not allowed for {request.url.path}", "method_not_allowed"
        else:
            msg, code = str(e.detail), None
        return JSONResponse(error_body(msg, "invalid_request_error", None, code), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {e.errors()[0].get('msg')}", "invalid_request_error"),
                            status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error",
                                       None, "internal_error"), status_code=500)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), api_key):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def check_model(name: str | None) -> None:
        if name is not None and name != cfg.served_model_name:
            raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")

    # The most characters one token can stand for (byte-level BPE: a vocabulary string has one character per byte,
    # and a byte decodes to at most one character); 4x slack where a normalizer may compose characters. A prompt of
    # more characters than max_model_len tokens can hold is refused before any tokenizing (issue 17 item 3).
    chars_per_token = None
    if tok is not None and hasattr(tok, "backend"):
        longest = max((len(t) for t in tok.backend.get_vocab(with_added_tokens=True)), default=1)
        chars_per_token = longest * (1 if tok.backend.normalizer is None else 4)

    def check_chars(n_chars: int, what: str) -> None:
        if chars_per_token is not None and n_chars > engine.max_model_len * chars_per_token:
            raise APIError(400, f"This model's maximum context length is {engine.max_model_len} tokens. However, "
                                f"your {what} has {n_chars} characters, more than {engine.max_model_len} tokens can "
                                f"hold (at most {chars_per_token} characters each). Please reduce the length of the "
                                f"{what}.", param="messages" if what == "messages" else "prompt",
                           code="context_length_exceeded")

    def budget(n_prompt: int, requested: int | None, what: str) -> int:
        """max_tokens for the engine: what was asked if it fits, else the rest of the context."""
        max_len = engine.max_model_len
        if n_prompt >= max_len:
            raise context_overflow(max_len, n_prompt, requested, what)
        if requested is None:
            return max_len - n_prompt
        if n_prompt + requested > max_len:
            raise context_overflow(max_len, n_prompt, requested, what)
        return requested

    def check_n(n: int) -> None:
        if n > worker.max_num_seqs:  # could never be admitted: a caller mistake, not overload
            raise APIError(400, f"n: at most {worker.max_num_seqs} choices per request on this server", param="n")

    def params(req: Any, max_tokens: int, logprobs: int | None) -> SamplingParams:
        check_n(req.n)
        try:
            return SamplingParams(n=req.n, max_tokens=max_tokens, logprobs=logprobs, **req.sampling_kwargs())
        except ValueError as e:
            msg = str(e).removeprefix("SamplingParams.")
            raise APIError(400, msg, param=msg.split(":")[0]) from None

    def job(handle: Any, prefix: str, req: Any, n_prompt: int, logprobs: int | None, **kw: Any) -> h.Job:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return h.Job(handle, new_id(prefix), now(), cfg.served_model_name, req.n, n_prompt, logprobs, tok,
                     think_ids=think_ids, include_usage=include_usage, keepalive_s=cfg.keepalive_s, **kw)

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        if worker.healthy and worker.accepting:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics")
    async def prometheus(request: Request) -> PlainTextResponse:
        check_auth(request)  # behind the key when one is set
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(request)
        return JSONResponse({"object": "list",
                             "data": [model_card(cfg.served_model_name, created, engine.max_model_len)]})

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> JSONResponse:
        check_auth(request)
        check_model(model)
        return JSONResponse(model_card(cfg.served_model_name, created, engine.max_model_len))

    @app.post("/v1/chat/completions", openapi_extra=_json_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        check_auth(request)
        req = parse(ChatCompletionRequest, await read_json(request, cfg.max_body_bytes, cfg.read_timeout_s))
        req.check()
        check_model(req.model)
        check_n(req.n)
        worker.check_room(req.n)  # shed load before the tokenizer's work
        if tok is None:
            raise APIError(400, "This model has no tokenizer, so no chat template: use /v1/completions with "
                                "token ids.")
        messages = chat_messages(req)
        check_chars(sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str)), "messages")
        kwargs = dict(req.chat_template_kwargs or {})
        bad = sorted(k for k in kwargs
                     if k in _RESERVED_TEMPLATE_KWARGS or not str(k).isidentifier() or str(k).startswith("_"))
        if bad:
            raise APIError(400, f"chat_template_kwargs: {bad[0]!r} cannot be set", param="chat_template_kwargs")

        def render() -> tuple[str, list[int]]:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
            return text, tok.encode(text, add_special_tokens=False)
        try:  # in the tokenizer pool: a long conversation must not stall the other streams
            text, ids = await tokenizer_pool.run(render)
        except (ValueError, TypeError) as e:
            raise APIError(400, f"messages: {e}", param="messages") from None
        sp = params(req, budget(len(ids), req.completion_limit, "messages"), req.num_logprobs)
        parser = ReasoningParser.for_prompt(text) if cfg.reasoning_parser else None
        handle = worker.submit([({"prompt": text, "prompt_token_ids": ids}, sp)], asyncio.get_running_loop())
        metrics.add_prompt_tokens(len(ids))
        j = job(handle, "chatcmpl", req, len(ids), req.num_logprobs, parser=parser)
        if req.stream:
            return _Stream(h.chat_stream(j), handle)
        return await finish(request, j, req.n, h.chat_response)

    @app.post("/v1/completions", openapi_extra=_json_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        check_auth(request)
        req = parse(CompletionRequest, await read_json(request, cfg.max_body_bytes, cfg.read_timeout_s))
        req.check()
        check_model(req.model)
        prompts = req.prompts()
        if len(prompts) * req.n > worker.max_num_seqs:  # never admissible: a 400 before any 429
            raise APIError(400, f"prompt: {len(prompts)} prompts x n={req.n} exceed the {worker.max_num_seqs} "
                                "sequences this server runs at once", param="prompt")
        worker.check_room(len(prompts) * req.n)
        for p in prompts:
            if isinstance(p, str):
                check_chars(len(p), "prompt")
        if tok is None and any(isinstance(p, str) for p in prompts):
            raise APIError(400, "prompt: this model has no tokenizer; send token ids", param="prompt")

        def encode() -> list[tuple[list[int], str]]:  # (ids, the text to echo)
            return [(tok.encode(p), p) if isinstance(p, str)
                    else (list(p), tok.decode(p) if tok is not None and req.echo else "") for p in prompts]
        try:
            encoded = await tokenizer_pool.run(encode)
        except (ValueError, TypeError, OverflowError) as e:
            raise APIError(400, f"prompt: {e}", param="prompt") from None
        items, texts, total = [], [], 0
        for p, (ids, text) in zip(prompts, encoded):
            if not ids:
                raise APIError(400, "prompt: must not be empty", param="prompt")
            texts.append(text)
            sp = params(req, budget(len(ids), req.max_tokens, "prompt"), req.logprobs)
            items.append(({"prompt": p if isinstance(p, str) else None, "prompt_token_ids": ids}, sp))
            total += len(ids)
        handle = worker.submit(items, asyncio.get_running_loop())
        metrics.add_prompt_tokens(total)
        j = job(handle, "cmpl", req, total, req.logprobs, echo=texts if req.echo else None)
        if req.stream:
            return _Stream(h.completion_stream(j, len(prompts) * req.n), handle)
        return await finish(request, j, len(prompts) * req.n, h.completion_response)

    async def finish(request: Request, j: h.Job, n_choices: int, build: Any) -> Response:
        try:
            states = await h.drain_unless_disconnected(j, n_choices, request.receive)
        except EngineError as e:
            raise APIError(500, str(e), code="engine_error") from None
        if states is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return JSONResponse(build(j, states))

    endpoints = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(_CountRequests, metrics=metrics, endpoints=endpoints)
    app.add_middleware(_BrowserGuard, allowed_origins=tuple(cfg.allowed_origins),
                       allowed_hosts=tuple(cfg.allowed_hosts))
    return app


def default_model_name(model_dir: str) -> str:
    return os.path.basename(os.path.normpath(model_dir)) or "nanoseek"


def uvicorn_config(app: Any, config: ServeConfig, host: str, port: int, **kwargs: Any) -> Any:
    """uvicorn's settings for `app`: the connection cap, keep-alive timeout and header timeout of `config` (the
    last through a subclass of uvicorn's HTTP protocol: `http=` in `kwargs` names the one to extend, default
    uvicorn's "auto")."""
    import uvicorn

    from .header_timeout import header_timeout_protocol
    http = header_timeout_protocol(kwargs.pop("http", "auto"), config.header_timeout_s, config.max_header_bytes)
    return uvicorn.Config(app, host=host, port=port, limit_concurrency=config.max_connections,
                          timeout_keep_alive=config.keepalive_timeout_s, http=http, **kwargs)


def run_server(llm: Any, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
               shutdown_timeout_s: float = 30.0, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then uvicorn stops accepting, waits up to `shutdown_timeout_s` for open
    responses, and the engine thread drains or aborts what is left."""
    import uvicorn
    t0 = time.perf_counter()
    app = create_app(llm, config)
    uv = uvicorn_config(app, config, host, port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout_s,
                        access_log=log_level == "debug")
    log.info("app ready in %.2fs", time.perf_counter() - t0)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal that stopped it under the handler it found; with this one a SIGTERM that
        # ended in a clean drain exits 0 instead of dying by the signal
        signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM after shutdown"))
    uvicorn.Server(uv).run()
