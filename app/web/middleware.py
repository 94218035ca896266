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
            # the view answers (its 503 page keeps the form); the body is never read: the app
            # gets an empty one, and read_body_limited raises the 503 (see app.web.uploads)
            self.rejected += 1
            retry = runner.retry_after() if queue_full else 2
            why = f"{runner.queued} requests queued" if queue_full else "too many uploads in progress"
            state = scope.setdefault("state", {})
            state[BUSY_KEY] = (retry, f"The live model is busy ({why}); retry in {retry} s.")
            await self.app(scope, _empty_body, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


#: ``scope["state"]`` key set when an upload was refused admission: ``(retry_after, message)``.
BUSY_KEY = "upload_busy"


async def _empty_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
