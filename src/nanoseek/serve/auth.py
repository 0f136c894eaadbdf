"""The API key check: `Authorization: Bearer KEY`, answered with OpenAI's 401 when missing or wrong."""
from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from .protocol import APIError


class APIKeyCheck:
    """Checks requests against `api_key` (None: every request passes). Keys are compared as SHA-256 digests in
    constant time, so neither the key's content nor its length leaks by timing."""

    def __init__(self, api_key: str | None):
        self.digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def __call__(self, request: Request) -> None:
        if self.digest is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), self.digest):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
