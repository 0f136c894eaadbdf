"""Reading a request body as JSON within the server's limits: size (413), arrival time (408), syntax and nesting
depth (400), each answered in OpenAI's error shape."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request

from .protocol import APIError

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
