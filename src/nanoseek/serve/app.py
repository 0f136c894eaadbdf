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
import logging
import os
import signal
import threading
import time
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from ..infer.sampling import SamplingParams
from ..reasoning import ReasoningParser
from . import handlers as h
from .auth import APIKeyCheck
from .body import read_json
from .config import ServeConfig
from .errors import add_error_handlers
from .metrics import Metrics
from .middleware import BrowserGuard, CountRequests
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, chat_messages, context_overflow,
                       model_card, new_id, now, parse)
from .tokenizer_pool import TokenizerPool
from .worker import EngineError, EngineWorker

log = logging.getLogger("nanoseek.serve")

Req = TypeVar("Req", ChatCompletionRequest, CompletionRequest)

# chat_template_kwargs may set template variables (e.g. `thinking`), never apply_chat_template's own arguments
_RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "documents", "add_generation_prompt", "tokenize",
                             "continue_final_message", "chat_template", "bos_token", "eos_token", "pad_token",
                             "unk_token"}


def template_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    """The request's chat_template_kwargs, 400 for a name that is not a plain template variable."""
    kwargs = dict(req.chat_template_kwargs or {})
    bad = sorted(k for k in kwargs
                 if k in _RESERVED_TEMPLATE_KWARGS or not str(k).isidentifier() or str(k).startswith("_"))
    if bad:
        raise APIError(400, f"chat_template_kwargs: {bad[0]!r} cannot be set", param="chat_template_kwargs")
    return kwargs


def _json_body(model: Any) -> dict[str, Any]:
    """The OpenAPI requestBody of a route whose handler parses `model` from the JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _load_page() -> str:
    return resources.files("nanoseek.serve").joinpath("static/index.html").read_text(encoding="utf-8")


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
    check_auth = APIKeyCheck(cfg.api_key)
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
    add_error_handlers(app)

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

    def check_model(name: str | None) -> None:
        if name is not None and name != cfg.served_model_name:
            raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")

    async def read_request(request: Request, model: type[Req]) -> Req:
        """The body as a checked `model` request, behind the key and for the served model only."""
        check_auth(request)
        req = parse(model, await read_json(request, cfg.max_body_bytes, cfg.read_timeout_s))
        req.check()
        check_model(req.model)
        return req

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
        req = await read_request(request, ChatCompletionRequest)
        check_n(req.n)
        worker.check_room(req.n)  # shed load before the tokenizer's work
        if tok is None:
            raise APIError(400, "This model has no tokenizer, so no chat template: use /v1/completions with "
                                "token ids.")
        messages = chat_messages(req)
        check_chars(sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str)), "messages")
        kwargs = template_kwargs(req)

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
            return h.SSEResponse(h.chat_stream(j), handle)
        return await finish(request, j, req.n, h.chat_response)

    @app.post("/v1/completions", openapi_extra=_json_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        req = await read_request(request, CompletionRequest)
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
            return h.SSEResponse(h.completion_stream(j, len(prompts) * req.n), handle)
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
    app.add_middleware(CountRequests, metrics=metrics, endpoints=endpoints)
    app.add_middleware(BrowserGuard, allowed_origins=tuple(cfg.allowed_origins),
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
