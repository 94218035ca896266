"""ASGI middleware of the web app."""

from __future__ import annotations

from typing import Any

Scope = dict[str, Any]


class HeadAsGet:
    """Answer ``HEAD`` for every ``GET`` route: run the ``GET`` and send its headers only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


#: POST routes whose body is an image upload (read and decoded before the model is asked).
UPLOAD_PATHS = frozenset({"/analyze", "/analyze.json", "/typographic", "/typographic.json"})


class UploadAdmission:
    """Admit an upload only when it can be served: ``503`` + ``Retry-After`` *before* its body
    is read when ``max_inflight`` uploads are already being read/decoded, or when the live
    model's queue is full. Memory held by uploads is then bounded by ``max_inflight`` bodies
    plus the decode semaphore's working sets (:mod:`app.web.uploads`)."""

    def __init__(self, app: Any, *, max_inflight: int) -> None:
        self.app = app
        self.max_inflight = max(1, int(max_inflight))
        self.inflight = 0
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        runner = getattr(getattr(scope.get("app"), "state", None), "live_runner", None)
        queue_full = runner is not None and getattr(runner, "running", False) and (
            runner.queued >= runner.queue_size
        )
        if self.inflight >= self.max_inflight or queue_full:
            self.rejected += 1
            retry = runner.retry_after() if queue_full else 2
            await _busy(scope, send, retry, "model queue" if queue_full else "uploads in progress")
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _busy(scope: Scope, send: Any, retry_after: int, why: str) -> None:
    import json

    message = f"The server is busy ({why}); retry in {retry_after} s."
    accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
    if scope["path"].endswith(".json") or ("json" in accept and "html" not in accept):
        body = json.dumps({"ok": False, "status": 503, "title": "Busy", "error": message}).encode()
        kind = b"application/json"
    else:
        body = (f"<!doctype html><title>Busy</title><h1>Busy</h1><p>{message}</p>").encode()
        kind = b"text/html; charset=utf-8"
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()), (b"connection", b"close")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
