"""Turning engine outputs into OpenAI responses: whole chat/text completions and their SSE streams.

A stream is `data: <json>\\n\\n` events ending in `data: [DONE]`; `: keep-alive` comments go out while a request
waits (DeepSeek does the same); an error after the stream started (the engine failed a step, or ended this request
alone) is one `data: {"error": ...}` event, which the openai client raises, then `data: [DONE]`. Reasoning is split
from the answer with nanoseek.ReasoningParser, per choice, token by token.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import StreamingResponse

from ..infer.outputs import CompletionOutput, Logprob, RequestOutput
from ..reasoning import ReasoningParser, ReasoningStream
from .protocol import error_body, finite, usage
from .worker import EngineError, RequestHandle

# The engine's "abort" only reaches a client when the server cancels a request (shutdown): DeepSeek's reason for
# "generation interrupted for lack of inference resources".
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "insufficient_system_resource"}


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
SSE_KEEPALIVE = ": keep-alive\n\n"


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else FINISH_REASONS.get(reason, reason)


# ---------------------------------------------------------------------------------------------------- logprobs
def _ranked(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    return sorted(((t, lp) for t, lp in entry.items() if 1 <= lp.rank <= k), key=lambda x: x[1].rank)


def _token_str(lp: Logprob | None, tid: int, tokenizer: Any) -> str:
    if lp is not None and lp.decoded_token is not None:
        return lp.decoded_token
    return tokenizer.decode([tid]) if tokenizer is not None else str(tid)


def chat_logprobs(c: CompletionOutput, k: int, tokenizer: Any) -> list[dict[str, Any]]:
    """OpenAI's `logprobs.content` items for the tokens of `c`."""
    items = []
    for tid, entry in zip(c.token_ids, c.logprobs or []):
        lp = entry.get(tid)
        tok = _token_str(lp, tid, tokenizer)
        items.append({"token": tok, "logprob": finite(lp.logprob if lp else float("nan")),
                      "bytes": list(tok.encode("utf-8")),
                      "top_logprobs": [{"token": _token_str(x, t, tokenizer), "logprob": finite(x.logprob),
                                        "bytes": list(_token_str(x, t, tokenizer).encode("utf-8"))}
                                       for t, x in _ranked(entry, k)]})
    return items


def completion_logprobs(c: CompletionOutput, k: int, tokenizer: Any, offset: int) -> dict[str, Any]:
    """The legacy endpoint's `logprobs` object; `offset` is where this piece's text starts."""
    tokens, lps, tops, offsets = [], [], [], []
    for tid, entry in zip(c.token_ids, c.logprobs or []):
        lp = entry.get(tid)
        tok = _token_str(lp, tid, tokenizer)
        tokens.append(tok)
        lps.append(finite(lp.logprob if lp else float("nan")))
        tops.append({_token_str(x, t, tokenizer): finite(x.logprob) for t, x in _ranked(entry, k)})
        offsets.append(offset)
        offset += len(tok)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


# ---------------------------------------------------------------------------------------------------- choices
@dataclass
class ChoiceState:
    """One choice's accumulated output."""
    stream: ReasoningStream | None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    pieces: list[CompletionOutput] = field(default_factory=list)  # deltas carrying logprobs
    finish_reason: str | None = None

    def feed(self, c: CompletionOutput) -> tuple[str, str]:
        """Add one delta; returns the (reasoning, content) text it releases."""
        self.text += c.text
        self.token_ids += c.token_ids
        if c.finish_reason is not None:
            self.finish_reason = c.finish_reason
        if self.stream is None:
            return "", c.text
        r, a = self.stream.feed(c.text)
        if c.finish_reason is not None:
            r2, a2 = self.stream.finish()
            r, a = (r or "") + (r2 or ""), (a or "") + (a2 or "")
        return r or "", a or ""


def reasoning_tokens(token_ids: list[int], parser: ReasoningParser | None, think_ids: tuple[int | None, int | None]
                     ) -> int:
    """Generated tokens inside the reasoning: those before the first `</think>` when the output starts in it."""
    if parser is None or think_ids[1] is None:
        return 0
    start, end = think_ids
    i = 0
    if token_ids and token_ids[0] == start:
        i = 1
    elif not parser.starts_in_reasoning:
        return 0
    try:
        return token_ids.index(end, i) - i
    except ValueError:
        return len(token_ids) - i


@dataclass
class Job:
    """What a handler knows about one HTTP request when it builds the answer."""
    handle: RequestHandle
    id: str
    created: int
    model: str
    n: int
    prompt_tokens: int
    num_logprobs: int | None
    tokenizer: Any
    parser: ReasoningParser | None = None
    think_ids: tuple[int | None, int | None] = (None, None)
    include_usage: bool = False
    keepalive_s: float = 15.0
    echo: list[str] | None = None  # completions: prompt texts to echo


async def drain(job: Job, n_choices: int) -> list[ChoiceState]:
    """Run a non-streaming request to the end; choice i of prompt p lands at p·n + i."""
    states = [ChoiceState(job.parser.stream() if job.parser else None) for _ in range(n_choices)]
    index = {rid: p for p, rid in enumerate(job.handle.request_ids)}
    async for out in job.handle:
        base = index[out.request_id] * job.n
        for c in out.outputs:
            st = states[base + c.index]
            st.feed(c)
            if job.num_logprobs is not None and c.logprobs:
                st.pieces.append(c)
    return states


def _usage(job: Job, states: list[ChoiceState]) -> dict[str, Any]:
    gen = sum(len(s.token_ids) for s in states)
    think = sum(reasoning_tokens(s.token_ids, job.parser, job.think_ids) for s in states)
    return usage(job.prompt_tokens, gen, think)


# ---------------------------------------------------------------------------------------------------- chat
def chat_response(job: Job, states: list[ChoiceState]) -> dict[str, Any]:
    choices = []
    for i, st in enumerate(states):
        if job.parser is not None:
            reasoning, content = job.parser.parse(st.text)
            message: dict[str, Any] = {"role": "assistant",
                                       "content": content if content is not None or reasoning else st.text,
                                       "reasoning_content": reasoning}
        else:
            message = {"role": "assistant", "content": st.text}
        lp = None
        if job.num_logprobs is not None:
            lp = {"content": [x for piece in st.pieces for x in chat_logprobs(piece, job.num_logprobs, job.tokenizer)]}
        choices.append({"index": i, "message": message, "logprobs": lp,
                        "finish_reason": finish_reason(st.finish_reason)})
    return {"id": job.id, "object": "chat.completion", "created": job.created, "model": job.model,
            "system_fingerprint": None, "choices": choices, "usage": _usage(job, states)}


def chat_stream(job: Job) -> AsyncIterator[str]:
    states = [ChoiceState(job.parser.stream() if job.parser else None) for _ in range(job.n)]
    head = {"id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": job.model,
            "system_fingerprint": None}
    extra = {"usage": None} if job.include_usage else {}

    def chunk(choice: dict[str, Any]) -> str:
        return sse({**head, "choices": [choice], **extra})

    def events(outs: list[RequestOutput]) -> list[str]:
        merged: dict[int, dict[str, Any]] = {}  # per choice, what these outputs add
        for out in outs:
            for c in out.outputs:
                m = merged.setdefault(c.index, {"reasoning_content": "", "content": "", "logprobs": [],
                                                "finish_reason": None})
                reasoning, content = states[c.index].feed(c)
                m["reasoning_content"] += reasoning
                m["content"] += content
                if job.num_logprobs is not None and c.logprobs:
                    m["logprobs"] += chat_logprobs(c, job.num_logprobs, job.tokenizer)
                m["finish_reason"] = finish_reason(c.finish_reason)
        found = []
        for i in sorted(merged):
            m = merged[i]
            delta = {k: m[k] for k in ("reasoning_content", "content") if m[k]}
            lp = {"content": m["logprobs"]} if m["logprobs"] else None
            if delta or lp or m["finish_reason"]:
                found.append(chunk({"index": i, "delta": delta, "logprobs": lp, "finish_reason": m["finish_reason"]}))
        return found

    opening = [chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}) for i in range(job.n)]
    return _event_stream(job, states, head, opening, events)


# ---------------------------------------------------------------------------------------------------- completions
def completion_response(job: Job, states: list[ChoiceState]) -> dict[str, Any]:
    choices = []
    for i, st in enumerate(states):
        prefix = job.echo[i // job.n] if job.echo else ""
        lp = None
        if job.num_logprobs is not None:
            lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            offset = len(prefix)
            for piece in st.pieces:
                part = completion_logprobs(piece, job.num_logprobs, job.tokenizer, offset)
                for k in lp:
                    lp[k] += part[k]
                offset += len(piece.text)
        choices.append({"index": i, "text": prefix + st.text, "logprobs": lp,
                        "finish_reason": finish_reason(st.finish_reason)})
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": job.model,
            "system_fingerprint": None, "choices": choices, "usage": _usage(job, states)}


def completion_stream(job: Job, n_choices: int) -> AsyncIterator[str]:
    states = [ChoiceState(None) for _ in range(n_choices)]
    offsets = [len(job.echo[i // job.n]) if job.echo else 0 for i in range(n_choices)]
    index = {rid: p for p, rid in enumerate(job.handle.request_ids)}
    head = {"id": job.id, "object": "text_completion", "created": job.created, "model": job.model,
            "system_fingerprint": None}
    extra = {"usage": None} if job.include_usage else {}

    def events(outs: list[RequestOutput]) -> list[str]:
        merged: dict[int, dict[str, Any]] = {}  # per choice, what these outputs add
        for out in outs:
            for c in out.outputs:
                i = index[out.request_id] * job.n + c.index
                m = merged.setdefault(i, {"text": "", "logprobs": None, "finish_reason": None})
                states[i].feed(c)
                if job.num_logprobs is not None and c.logprobs:
                    part = completion_logprobs(c, job.num_logprobs, job.tokenizer, offsets[i])
                    m["logprobs"] = part if m["logprobs"] is None else {k: m["logprobs"][k] + part[k] for k in part}
                offsets[i] += len(c.text)
                m["text"] += c.text
                m["finish_reason"] = finish_reason(c.finish_reason)
        return [sse({**head, "choices": [{"index": i, **m}], **extra}) for i, m in sorted(merged.items())
                if m["text"] or m["logprobs"] or m["finish_reason"]]

    opening = [sse({**head, "choices": [{"index": i, "text": job.echo[i // job.n], "logprobs": None,
                                         "finish_reason": None}], **extra}) for i in range(n_choices)] \
        if job.echo else []
    return _event_stream(job, states, head, opening, events)


# ---------------------------------------------------------------------------------------------------- streaming
class SSEResponse(StreamingResponse):
    """An SSE response that aborts its engine requests however it ends (done, client gone, server cancelled)."""

    def __init__(self, content: AsyncIterator[str], handle: RequestHandle):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.handle = handle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.abort()


async def _event_stream(job: Job, states: list[ChoiceState], head: dict[str, Any], opening: list[str],
                        events: Callable[[list[RequestOutput]], list[str]]) -> AsyncIterator[str]:
    """The SSE frame both endpoints share: the `opening` events, then the `events` of each batch of engine outputs
    (one write per batch; a keep-alive comment while none come), the usage chunk when asked for and [DONE]. An
    engine error ends it with an error event; the request is aborted however the stream ends."""
    try:
        for e in opening:
            yield e
        while not job.handle.done:
            outs = await job.handle.next_batch(job.keepalive_s)
            if outs is None:
                yield SSE_KEEPALIVE
                continue
            found = events(outs)
            if found:
                yield "".join(found)
        if job.include_usage:
            yield sse({**head, "choices": [], "usage": _usage(job, states)})
        yield SSE_DONE
    except EngineError as e:
        yield sse(error_body(str(e), "server_error", None, "engine_error")) + SSE_DONE
    finally:
        job.handle.abort()  # a client that went away mid-stream frees its sequences at the next engine step


async def wait_disconnect(receive: Any) -> None:
    """Returns when the client has gone (the request body was already read, so only http.disconnect follows)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def drain_unless_disconnected(job: Job, n_choices: int, receive: Any) -> list[ChoiceState] | None:
    """`drain`, racing the client: None (and the request aborted) if it disconnects first."""
    work = asyncio.ensure_future(drain(job, n_choices))
    gone = asyncio.ensure_future(wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        return None
    finally:
        for t in (work, gone):
            if not t.done():
                t.cancel()
        job.handle.abort()
