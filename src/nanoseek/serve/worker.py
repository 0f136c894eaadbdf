"""The engine thread: one LLMEngine driven by one background thread, fed from the asyncio side.

    handle = worker.submit([(prompt, params)], loop)   # admission control here (bounded, raises APIError 429/503)
    async for out in handle: ...                       # RequestOutputs (deltas) as the engine produces them
    handle.abort()                                     # client gone: the engine frees its blocks at its next step

The thread sleeps on an Event while the engine is idle and otherwise calls `engine.step()` back to back, so requests
join and leave the running batch at every step (continuous batching). `add_request` / `abort_request` are safe to
call from the event loop (the engine keeps a locked inbox); outputs cross back with `loop.call_soon_threadsafe`.

Admission: a request of n samples takes n slots; at most max_num_seqs + max_queue slots are in flight, so at most
`max_queue` wait beyond a full batch and the server sheds load (429 + Retry-After) instead of growing a queue.

Failures: a request the engine ended alone (RequestOutput.error: its own sampling, stop check or text failed)
reaches its handler as an EngineError, like a failed step, but only that HTTP request fails (its other prompts are
aborted) and it does not count toward the failed steps after which the worker stops serving.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..infer.outputs import RequestOutput
from ..infer.sampling import SamplingParams
from .metrics import Metrics
from .protocol import APIError

log = logging.getLogger("nanoseek.serve")


class EngineError(RuntimeError):
    """The engine failed while running a request (a server fault, answered as 500)."""


@dataclass(eq=False)
class _Tracked:
    """What the worker thread knows about one engine request."""
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    slots: int
    arrival: float
    last_output: float | None = None
    abort_step: int | None = None  # engine step count when an abort was asked for


@dataclass(eq=False)
class RequestHandle:
    """The engine requests behind one HTTP request; iterate to receive their outputs."""
    worker: "EngineWorker"
    request_ids: list[str]
    queue: asyncio.Queue
    pending: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.pending = set(self.request_ids)

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[RequestOutput]:
        while self.pending:
            yield self._take(await self.queue.get())

    def _take(self, item: Any) -> RequestOutput:
        if isinstance(item, BaseException):
            rest, self.pending = list(self.pending), set()
            self.worker.abort(rest)  # one prompt failed the HTTP request: its other prompts stop too (no-op if gone)
            raise item
        if item.finished:
            self.pending.discard(item.request_id)
        return item

    async def next_batch(self, timeout: float | None) -> list[RequestOutput] | None:
        """The next output and every other one already waiting (a stream that fell behind the engine sends them
        as one write), or None after `timeout` seconds without any (for SSE keep-alives)."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        items = [self._take(first)]
        while self.pending and not self.queue.empty():
            items.append(self._take(self.queue.get_nowait()))
        return items

    @property
    def done(self) -> bool:
        return not self.pending

    def abort(self) -> None:
        """Cancel whatever has not finished (idempotent)."""
        if self.pending:
            self.worker.abort(list(self.pending))


class EngineWorker:
    MAX_CONSECUTIVE_FAILURES = 3

    def __init__(self, engine: Any, metrics: Metrics, max_queue: int = 256, idle_wait_s: float = 0.5):
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue: must be an integer >= 0 (got {max_queue!r})")
        self.engine = engine
        self.metrics = metrics
        self.max_num_seqs: int = engine.scheduler.max_num_seqs
        self.max_queue = max_queue
        self.capacity = self.max_num_seqs + max_queue
        self.idle_wait_s = idle_wait_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tracked: dict[str, _Tracked] = {}
        self._slots = 0
        self._accepting = False
        self._ids = 0
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.peak_running_seqs = 0
        self.abort_lags: list[int] = []  # engine steps between an abort and the output that confirmed it

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="nanoseek-engine", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def accepting(self) -> bool:
        return self._accepting

    def num_in_flight(self) -> int:
        with self._lock:
            return len(self._tracked)

    def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Graceful stop: refuse new requests, let in-flight ones finish for up to `drain_timeout` seconds, abort
        the rest (their streams end with finish_reason `abort`), then stop the thread."""
        self._accepting = False
        deadline = time.monotonic() + max(0.0, drain_timeout)
        while self.num_in_flight() and time.monotonic() < deadline and self.healthy:
            time.sleep(0.02)
        with self._lock:
            left = list(self._tracked)
        if left:
            log.info("shutdown: aborting %d unfinished request(s)", len(left))
            self.abort(left)
            deadline = time.monotonic() + 2.0
            while self.num_in_flight() and time.monotonic() < deadline and self.healthy:
                time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:  # anything still tracked (engine dead): fail it so no handler waits forever
            for t in self._tracked.values():
                self._deliver(t, EngineError("the server is shutting down"))
            self._tracked.clear()
            self._slots = 0

    # ------------------------------------------------------------------ from the event loop
    def _refusal(self, slots: int) -> APIError | None:
        retry = {"Retry-After": "1"}
        if not self._accepting or not self.healthy:
            return APIError(503, "The server is not accepting requests (starting, shutting down or failed). "
                                 "Retry later.", code="service_unavailable", headers=retry)
        if slots > self.capacity:  # never admissible, even on an idle server: retrying cannot help
            return APIError(400, f"The request asks for {slots} sequences (prompts x n) but this server holds at "
                                 f"most {self.capacity} ({self.max_num_seqs} running + {self.max_queue} queued). "
                                 "Send fewer prompts or a smaller n per request.", param="n")
        if self._slots + slots > self.capacity:
            return APIError(429, f"The server is overloaded: {self._slots} sequences in flight, room for "
                                 f"{self.capacity} ({self.max_num_seqs} running + {self.max_queue} queued). "
                                 "Retry later.", code="queue_full", headers=retry)
        return None

    def check_room(self, slots: int) -> None:
        """Refuse early (before tokenizing) when the server is full; `submit` checks again under the lock."""
        err = self._refusal(slots)
        if err is not None:
            raise err

    def submit(self, items: list[tuple[Any, SamplingParams]], loop: asyncio.AbstractEventLoop) -> RequestHandle:
        """Queue one engine request per (prompt, params), all or none. Raises APIError 429/503 when the server
        cannot take them, 400 for what the engine rejects."""
        slots = sum(p.n for _, p in items)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            err = self._refusal(slots)
            if err is not None:
                raise err
            ids: list[str] = []
            arrival = time.time()
            try:
                for prompt, params in items:
                    self._ids += 1
                    rid = f"req-{self._ids}"
                    self.engine.add_request(prompt, params, rid, arrival_time=arrival)
                    ids.append(rid)
                    self._tracked[rid] = _Tracked(loop, queue, params.n, time.perf_counter())
                    self._slots += params.n
            except Exception as e:  # all or none: undo the ones already queued
                self._forget(ids)
                self.engine.abort_request(ids)
                if isinstance(e, ValueError):
                    raise APIError(400, str(e)) from None
                raise
        self._wake.set()
        return RequestHandle(self, ids, queue)

    def abort(self, request_ids: list[str]) -> None:
        with self._lock:
            step = self.engine.stats["steps"]
            live = [r for r in request_ids if r in self._tracked]
            for r in live:
                if self._tracked[r].abort_step is None:
                    self._tracked[r].abort_step = step
        if live:
            self.engine.abort_request(live)
            self._wake.set()

    # ------------------------------------------------------------------ the engine thread
    def _forget(self, ids: list[str]) -> None:
        for r in ids:
            t = self._tracked.pop(r, None)
            if t is not None:
                self._slots -= t.slots

    @staticmethod
    def _deliver(t: _Tracked, item: Any) -> None:
        try:
            t.loop.call_soon_threadsafe(t.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _run(self) -> None:
        engine = self.engine
        failures = 0  # consecutive failed steps
        while not self._stop.is_set():
            self._wake.clear()
            if not engine.has_unfinished_requests():
                self._publish_state()
                self._wake.wait(self.idle_wait_s)
                continue
            try:
                outs = engine.step()
            except Exception as e:  # a bug or resource failure: fail the requests in flight, keep serving
                log.exception("engine step failed")
                self._fail_all(e)
                failures += 1
                if failures >= self.MAX_CONSECUTIVE_FAILURES:
                    self.error = e  # /health answers 503 and new requests are refused from now on
                    log.error("the engine failed %d steps in a row: serving stopped", failures)
                    return
                continue
            failures = 0
            self._dispatch(outs)
            self._publish_state()

    def _fail_all(self, e: Exception) -> None:
        """Answer every request in flight with the error and abort it (the next step frees its blocks)."""
        with self._lock:
            ids = list(self._tracked)
            for r in ids:
                self._deliver(self._tracked[r], EngineError(f"the engine failed: {type(e).__name__}: {e}"))
            self._forget(ids)
        self.engine.abort_request(ids)

    @staticmethod
    def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
        for queue, item in items:
            queue.put_nowait(item)

    def _dispatch(self, outs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their requests: one wake-up of each event loop per step, not one per output."""
        now = time.perf_counter()
        m = self.metrics
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        with self._lock:
            for out in outs:
                t = self._tracked.get(out.request_id)
                if t is None:
                    continue
                new_tokens = sum(len(c.token_ids) for c in out.outputs)
                if new_tokens:
                    m.add_generation_tokens(new_tokens)
                    if t.last_output is None:
                        m.observe_ttft(now - t.arrival)
                    else:
                        m.observe_itl(now - t.last_output)
                    t.last_output = now
                if out.finished:
                    reasons = {c.finish_reason for c in out.outputs if c.finish_reason}
                    for reason in reasons or {"abort"}:
                        m.observe_finished(reason, now - t.arrival)
                    if t.abort_step is not None:
                        self.abort_lags.append(self.engine.stats["steps"] - t.abort_step)
                        del self.abort_lags[:-100]
                    self._forget([out.request_id])
                item: Any = out
                if getattr(out, "error", None) is not None:  # the engine ended this request alone
                    item = EngineError(f"the engine failed on this request: {out.error}")
                by_loop.setdefault(t.loop, []).append((t.queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._put_all, items)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

    def _publish_state(self) -> None:
        e = self.engine
        sched = e.scheduler
        pool = e.cache.pool
        running = list(sched.running)
        running_requests = len({id(s.request) for s in running})
        self.peak_running_seqs = max(self.peak_running_seqs, len(running))
        self.metrics.set_engine_state(
            waiting=max(0, e.get_num_unfinished_requests() - running_requests),
            running_requests=running_requests,
            running_seqs=len(running),
            cache_usage=1.0 - pool.num_free / pool.num_blocks,
            spec_draft=e.stats["spec_draft_tokens"], spec_accepted=e.stats["spec_accepted_tokens"],
            preemptions=sched.num_preemptions)
