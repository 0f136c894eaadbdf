"""The bounded thread pool that renders chat templates and tokenizes prompts off the event loop (issue 17 item 3)."""
from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .protocol import APIError


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
