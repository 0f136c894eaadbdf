"""Exception handlers: every error leaves the app in OpenAI's shape `{"error": {"message", "type", "param",
"code"}}` with its status (a caller's mistake a 4xx, a fault a 500 without a traceback)."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import APIError, error_body

log = logging.getLogger("nanoseek.serve")


def add_error_handlers(app: FastAPI) -> None:
    """Answer our APIErrors, Starlette's 404/405, FastAPI's validation errors and anything unexpected."""

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
