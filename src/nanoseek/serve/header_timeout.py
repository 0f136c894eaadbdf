"""A timeout and a size cap for request headers, which uvicorn lacks (issue 17 item 4: slowloris connections that
send one header byte every few seconds were held for as long as they kept sending; with httptools, uvicorn's faster
parser, a 10 MB header block was read and answered).

`header_timeout_protocol(base, timeout_s)` subclasses one of uvicorn's HTTP/1.1 protocol classes (h11 or httptools;
uvicorn's `http=` setting accepts a class). While a connection waits for a request's header block, a timer runs:

- from the moment the connection is made (a connection that sends nothing is closed after `timeout_s` too);
- on a keep-alive connection, from the first byte of the next request (the idle time between requests is uvicorn's
  own `timeout_keep_alive`, which uvicorn cancels when bytes arrive).

When the complete header block is there (uvicorn has built the request's cycle) the timer stops; the body then has
the app's own read timeout (`ServeConfig.read_timeout_s`, a 408) and a response may stream for as long as it needs.
When the timer fires, a connection that sent part of a request gets `408 Request Timeout` and is closed; one that
sent nothing is closed without an answer (as nginx's client_header_timeout does).

A header block (request line and headers, up to the blank line) longer than `max_header_bytes` gets
`431 Request Header Fields Too Large` and the connection is closed before the parser holds more of it. Body bytes
that arrive in the same segment as the end of the headers do not count.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("nanoseek.serve")

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_END = b"\r\n\r\n"


class HeaderTimeoutMixin:
    """Closes a connection whose request headers have not all arrived within `header_timeout_s` (see the module)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 65536
    # set by uvicorn's protocol classes; declared here for readers
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def _awaiting_headers(self) -> bool:
        """No request is being read or answered: the next bytes belong to a new request's header block."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer, self._header_timer = getattr(self, "_header_timer", None), None
        if timer is not None:
            timer.cancel()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = False  # did this connection send part of the request the timer waits for?
        self._header_len, self._header_tail = 0, b""  # bytes of the header block so far, its last 3 bytes
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers() and data:
            if self._header_timer is None:  # a keep-alive connection: the next request starts now
                self._arm_header_timer()
            self._header_bytes = True
            if self._header_block_too_long(data):
                self._cancel_header_timer()
                msg = b"The request headers exceed %d bytes." % self.max_header_bytes
                self.transport.write(_431 % (len(msg), msg))
                self.transport.close()
                return
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is not None and (not self._awaiting_headers() or self.transport.is_closing()
                                               or self.transport.get_protocol() is not self):
            # headers complete (a cycle runs), a 400 closed it, or it was upgraded to another protocol
            self._cancel_header_timer()
            self._header_bytes = False
            self._header_len, self._header_tail = 0, b""

    def _header_block_too_long(self, data: bytes) -> bool:
        """Count `data` into the header block; True when the block runs past max_header_bytes without its end."""
        seen = self._header_tail + data
        end = seen.find(_END)
        if end >= 0:  # the block ends in this segment: what follows is a body (or the next request)
            return self._header_len + end + len(_END) - len(self._header_tail) > self.max_header_bytes
        self._header_len += len(data)
        self._header_tail = seen[-(len(_END) - 1):]
        return self._header_len > self.max_header_bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _header_timeout(self) -> None:
        self._header_timer = None
        if (self.transport.is_closing() or self.transport.get_protocol() is not self
                or not self._awaiting_headers()):
            return
        if self._header_bytes:
            msg = b"The request headers did not arrive within %g s." % self.header_timeout_s
            self.transport.write(_408 % (len(msg), msg))
            log.debug("request headers not complete within %gs: 408, connection closed", self.header_timeout_s)
        self.transport.close()


def base_protocol(http: Any = "auto") -> type:
    """uvicorn's HTTP protocol class for its `http=` setting (a name such as "auto", "h11", "httptools", a
    "module:Class" string, or a class)."""
    if not isinstance(http, str):
        return http
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string
    return import_from_string(HTTP_PROTOCOLS.get(http, http))


def header_timeout_protocol(base: Any, timeout_s: float, max_header_bytes: int = 65536) -> type:
    """A subclass of uvicorn's protocol `base` (see `base_protocol`) that closes connections whose request headers
    have not arrived within `timeout_s` seconds or run past `max_header_bytes`; pass it to uvicorn as `http=`."""
    cls = base_protocol(base)
    if timeout_s <= 0:
        raise ValueError(f"header timeout must be > 0 (got {timeout_s})")
    if max_header_bytes < 256:
        raise ValueError(f"max header bytes must be >= 256 (got {max_header_bytes})")
    return type(f"HeaderTimeout{cls.__name__}", (HeaderTimeoutMixin, cls),
                {"header_timeout_s": float(timeout_s), "max_header_bytes": int(max_header_bytes)})
