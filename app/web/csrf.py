"""Browser writes are same-origin: CSRF tokens, an Origin check, and JSON content types.

:class:`CSRFMiddleware` (outermost, so cached pages work too):

* Every visitor gets a random token in the cookie ``csrftoken`` (``SameSite=Strict``,
  ``HttpOnly``). Templates write :data:`PLACEHOLDER` (the Jinja global ``csrf_token``) in hidden
  form fields and ``hx-headers``; the middleware replaces it in HTML responses with the visitor's
  token, so a page cached for everyone still carries each visitor's own token.
* Unsafe methods (POST, PUT, PATCH, DELETE): a cross-site browser request is refused (403):
  ``Sec-Fetch-Site: cross-site``/``same-site``, or an ``Origin`` other than this server's
  (``null`` included).
* ``.json`` POSTs (the API) need a JSON, multipart or image body type: ``text/plain`` or a form
  encoding is 415 (a cross-site ``<form>`` or a "simple" ``fetch`` cannot send those without a
  preflight, which this server never grants).
* Form POSTs (every other unsafe route) must echo the token: the ``X-CSRF-Token`` header or the
  ``csrf_token`` form field equals the cookie; the view checks it with :func:`verify` once it
  has parsed its form (403 otherwise), the Django way.
"""

from __future__ import annotations

import hmac
import re
import secrets
from http.cookies import SimpleCookie
from typing import Any

from fastapi import HTTPException, Request

COOKIE = "csrftoken"
FIELD = "csrf_token"
HEADER = "x-csrf-token"
PLACEHOLDER = "csrf0token0placeholder0000000000"  # 32 characters, like a token
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
JSON_BODY_TYPES = ("application/json", "multipart/form-data", "image/", "application/octet-stream")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")

Scope = dict[str, Any]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def cookie_token(cookie_header: str) -> str | None:
    """The visitor's token from a ``Cookie`` header (``None`` when absent or malformed)."""
    try:
        jar = SimpleCookie(cookie_header)
    except Exception:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and _TOKEN.match(morsel.value) else None


def _origin_host(origin: str) -> str:
    """``https://example.org:8080`` → ``example.org:8080`` (the scheme may differ behind a TLS proxy)."""
    return origin.split("://", 1)[-1].rstrip("/").lower()


def cross_site(scope: Scope, headers: dict[str, str]) -> str | None:
    """Why this request comes from another site (``None``: same origin, or not a browser)."""
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or _origin_host(origin) != headers.get("host", "").lower()):
        return f"Origin {origin!r} is not this server"
    return None


def token(request: Request) -> str:
    """This visitor's token (set by the middleware)."""
    return str(request.scope.get("state", {}).get("csrf_token", ""))


def verify(request: Request, form: Any = None) -> None:
    """403 unless the request echoes the visitor's cookie token (header or form field)."""
    expected = cookie_token(request.headers.get("cookie", ""))
    supplied = request.headers.get(HEADER) or (str(form.get(FIELD) or "") if form is not None else "")
    if not expected or not supplied or not hmac.compare_digest(expected, supplied):
        raise HTTPException(
            403,
            "CSRF check failed: this form must be sent from this site's own page "
            "(reload the page and try again; API clients use the .json endpoints).",
        )


class CSRFMiddleware:
    """See the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        existing = cookie_token(headers.get("cookie", ""))
        value = existing or secrets.token_hex(16)
        scope.setdefault("state", {})["csrf_token"] = value
        if scope["method"] not in SAFE_METHODS:
            problem = self._refuse(scope, headers)
            if problem is not None:
                await _plain(send, *problem)
                return
        sender = self._sender(send, value, set_cookie=existing is None, rewrite=scope["method"] != "HEAD")
        await self.app(scope, receive, sender)

    def _refuse(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        why = cross_site(scope, headers)
        if why is not None:
            return 403, f"Cross-site write refused ({why})."
        if scope["path"].endswith(".json"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith(JSON_BODY_TYPES):
                return 415, (
                    f"Unsupported content type {ctype!r}: send JSON, multipart/form-data or the raw "
                    "image (image/*, application/octet-stream)."
                )
        return None

    def _sender(self, send: Any, value: str, *, set_cookie: bool, rewrite: bool) -> Any:
        placeholder = PLACEHOLDER.encode()
        state: dict[str, Any] = {"html": False, "start": None, "body": []}

        async def sender(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if set_cookie:
                    cookie = f"{COOKIE}={value}; Path=/; SameSite=Strict; HttpOnly"
                    headers.append((b"set-cookie", cookie.encode()))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                message = {**message, "headers": headers}
                if rewrite and ctype.startswith(b"text/html"):
                    state["html"], state["start"] = True, message
                    return
                await send(message)
                return
            if message["type"] == "http.response.body" and state["html"]:
                state["body"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(state["body"]).replace(placeholder, value.encode())
                start = state["start"]
                start["headers"] = [
                    (k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                    for k, v in start["headers"]
                ]
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send(message)

        return sender


async def _plain(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_csrf(app: Any) -> None:
    """Add the middleware (outermost) and the template global ``csrf_token``."""
    app.add_middleware(CSRFMiddleware)
    app.state.templates.env.globals["csrf_token"] = PLACEHOLDER
