"""Error pages (HTML or JSON, chosen by the URL's ``.json`` suffix or the Accept header).

Views raise :class:`NotFound` (or any ``HTTPException``); unknown routes, validation errors and
unexpected exceptions get the same treatment, so no client ever sees a bare traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.web.formats import SafeJSONResponse, wants_json

log = logging.getLogger("conceptscope.web")

TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported media type",
    422: "Unprocessable input",
    429: "Too many requests",
    500: "Server error",
    503: "Busy",
}


class NotFound(HTTPException):
    """404 with a message that says what was not found."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=404, detail=detail)


def error_response(
    request: Request, status_code: int, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """The error as JSON ``{"error": ..., "status": ...}`` or as an HTML page."""
    title = TITLES.get(status_code, "Error")
    if wants_json(request) or not hasattr(request.app.state, "templates"):
        body = {"ok": False, "status": status_code, "title": title, "error": detail}
        return SafeJSONResponse(body, status_code=status_code, headers=headers)
    return request.app.state.templates.TemplateResponse(
        request,
        "error.html",
        {"status": status_code, "title": title, "detail": detail},
        status_code=status_code,
        headers=headers,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"There is no page at {request.url.path}."
    return error_response(request, exc.status_code, detail, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    return error_response(request, 422, "; ".join(parts) or "invalid request")


async def _live_error(request: Request, exc: Exception) -> Response:
    """Any live-model error that no view caught (busy, timeout, not running) is a 503 with
    ``Retry-After`` on every route, never a 500."""
    from app.live.context import live_http_error

    http = live_http_error(exc)  # type: ignore[arg-type]
    return error_response(request, http.status_code, str(http.detail), dict(http.headers or {}))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(request, 500, "Something went wrong on our side; the error was logged.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    from app.live.runner import LiveError

    app.add_exception_handler(LiveError, _live_error)
    app.add_exception_handler(Exception, _unexpected_error)
