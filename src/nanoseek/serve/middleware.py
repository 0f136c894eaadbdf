"""ASGI middleware around the app: request counting for /metrics, and the browser guard (403 for cross-site
requests and DNS-rebinding Host names). Both are plain ASGI so they see every response, error handlers' included."""
from __future__ import annotations

import ipaddress
import json
from typing import Any

from .metrics import Metrics


class CountRequests:
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


class BrowserGuard:
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
