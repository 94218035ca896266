"""Security middleware: trusted hosts, response headers (CSP, nosniff, framing, referrer), CORS.

Modelled on Django's ``ALLOWED_HOSTS`` + ``SecurityMiddleware`` and Datasette's ``--cors``:

- a request whose ``Host`` is not trusted gets a bare 400 (the name is never echoed; defends
  against DNS rebinding onto a server on 127.0.0.1 and poisoned absolute URLs);
- every response gets a Content-Security-Policy without inline or eval'd scripts,
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy`` and ``frame-ancestors 'none'``
  (``X-Frame-Options: DENY``), except routes under :data:`EMBED_PREFIX`, which any site may frame;
- ``Access-Control-Allow-Origin`` only with ``cors`` (``serve --cors``): then ``*`` on GET/HEAD
  JSON answers, which are public read-only data; without it the header is removed everywhere;
- a ``Location`` is never built from the ``Host`` header: an absolute redirect to the request's
  own host is rewritten to a path (e.g. Starlette's trailing-slash redirect);
- a trusted ``Host`` is passed on in lower case (absolute URLs such as ``og:url`` and oEmbed's are
  built from it: ``Host: LOCALHOST:1`` gives ``http://localhost:1/…``; the port is the client's);
- the headers are on every answer: the bad-host 400, and also the 500 of an unexpected error
  (Starlette answers that from its outermost middleware, past this one: the app's handler for
  ``Exception`` is called here instead, before the error goes on to be logged).
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

#: Routes under this prefix may be shown in frames on other sites (the embeddable cards).
EMBED_PREFIX = "/embed/"

#: What pages may load: only this server's own scripts (no inline, no eval: htmx's ``hx-on`` and
#: ``js:`` expressions are therefore unavailable), its styles plus ``style`` attributes, images
#: from itself and ``data:`` URIs (heatmap overlays), fetch/XHR to itself, no plugins.
CSP_DIRECTIVES: tuple[tuple[str, str], ...] = (
    ("default-src", "'self'"),
    ("script-src", "'self'"),
    ("style-src", "'self' 'unsafe-inline'"),
    ("img-src", "'self' data: blob:"),
    ("font-src", "'self'"),
    ("connect-src", "'self'"),
    ("object-src", "'none'"),
    ("base-uri", "'none'"),
    ("form-action", "'self'"),
)
REFERRER_POLICY = "strict-origin-when-cross-origin"

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Added when the app is built without an explicit list (``create_app`` in tests: httpx's and
#: Starlette's test clients send ``Host: testserver``; not a registrable DNS name).
TEST_HOSTS = ("testserver",)


def csp(framable: bool) -> str:
    ancestors = "*" if framable else "'none'"
    return "; ".join(f"{k} {v}" for k, v in (*CSP_DIRECTIVES, ("frame-ancestors", ancestors)))


_CSP_DENY = csp(False).encode()
_CSP_EMBED = csp(True).encode()


def default_trusted_hosts(bind_host: str | None = None) -> tuple[str, ...]:
    """Localhost names plus the address the server binds to (unless it is a wildcard)."""
    hosts = list(LOCAL_HOSTS)
    if bind_host and bind_host not in ("0.0.0.0", "::", "") and bind_host not in hosts:
        hosts.append(bind_host)
    return tuple(hosts)


def parse_trusted_hosts(text: str) -> tuple[str, ...]:
    """``--trusted-hosts`` value: comma-separated names; ``.example.org`` also allows its
    subdomains; ``*`` allows every host (behind a proxy that checks it)."""
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


def host_name(host_header: str) -> str | None:
    """The host part of a ``Host`` header (port removed, IPv6 brackets removed, lower case);
    ``None`` when it is malformed."""
    value = host_header.strip().lower()
    if not value or any(c in value for c in "/\\@ \t?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    elif value.count(":") > 1:
        return None
    else:
        name, _, port = value.partition(":")
        rest = f":{port}" if port or value.endswith(":") else ""
    if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
        return None
    return name.rstrip(".") or None


def host_allowed(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith(".") and (name == pattern[1:] or name.endswith(pattern)):
            return True
    return False


class SecurityMiddleware:
    """ASGI middleware applying the module docstring's rules to every HTTP request."""

    def __init__(self, app: Any, *, trusted_hosts: Iterable[str], cors: bool = False) -> None:
        self.app = app
        self.trusted_hosts = tuple(h.lower() for h in trusted_hosts)
        self.cors = cors

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host_header = _header(scope, b"host")
        name = host_name(host_header) if host_header is not None else None
        if name is None or not host_allowed(name, self.trusted_hosts):
            await _bad_host(send)
            return
        assert host_header is not None
        if host_header != host_header.strip().lower():
            host_header = host_header.strip().lower()
            scope = {**scope, "headers": _with_header(scope, b"host", host_header.encode("latin-1"))}
        path: str = scope.get("path", "")
        framable = path.startswith(EMBED_PREFIX)
        cors_ok = self.cors and scope.get("method") in ("GET", "HEAD")
        started = False

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": self._headers(message, host_header, framable, cors_ok)}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if not started:  # answer the 500 here, with the headers (module docstring)
                await _server_error(scope, receive, send_with_headers, exc)
            raise

    def _headers(
        self, message: dict[str, Any], host: str, framable: bool, cors_ok: bool
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        is_json = False
        for key, value in message.get("headers", []):
            lower = key.lower()
            if lower in (b"access-control-allow-origin", b"content-security-policy",
                         b"x-frame-options", b"x-content-type-options"):  # fmt: skip
                continue
            if lower == b"content-type":
                is_json = b"json" in value.lower()
            if lower == b"location":
                value = _relative_location(value, host)
            out.append((key, value))
        out.append((b"content-security-policy", _CSP_EMBED if framable else _CSP_DENY))
        out.append((b"x-content-type-options", b"nosniff"))
        if not framable:
            out.append((b"x-frame-options", b"DENY"))
        if not any(k.lower() == b"referrer-policy" for k, _ in out):
            out.append((b"referrer-policy", REFERRER_POLICY.encode()))
        out.append((b"cross-origin-opener-policy", b"same-origin"))
        if cors_ok and is_json:
            out.append((b"access-control-allow-origin", b"*"))
        return out


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _relative_location(value: bytes, host: str) -> bytes:
    """An absolute ``Location`` on the request's own host → the path (and query) alone."""
    try:
        text = value.decode("latin-1")
        parts = urlsplit(text)
    except ValueError:
        return value
    if parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower():
        path = parts.path or "/"
        if path.startswith("//"):  # never a scheme-relative URL to another host
            path = "/" + path.lstrip("/")
        return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    return value


def _with_header(scope: dict[str, Any], name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, value if k.lower() == name else v) for k, v in scope.get("headers", [])]


#: Headers of answers made here (the bad-host 400, a bare 500): those of every other answer.
_OWN_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-security-policy", _CSP_DENY),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", REFERRER_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
)


async def _plain(send: Any, status: int, body: bytes) -> None:
    headers = [*_OWN_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _bad_host(send: Any) -> None:
    await _plain(send, 400, b"Bad request: this server does not answer to that host name.\n")


async def _server_error(scope: dict[str, Any], receive: Any, send: Any, exc: Exception) -> None:
    """The app's own 500 (its handler for ``Exception``, e.g. an HTML or JSON error page) sent
    through ``send``; a bare 500 when there is none or it fails."""
    handlers = getattr(scope.get("app"), "exception_handlers", None) or {}
    handler = handlers.get(500) or handlers.get(Exception)
    started = False

    async def tracked(message: dict[str, Any]) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    if handler is not None:
        from starlette.requests import Request

        try:
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, tracked)
            return
        except Exception:  # noqa: BLE001 - the bare answer below, when nothing was sent yet
            if started:
                return
    await _plain(send, 500, b"Internal server error.\n")


def install_security(app: Any, settings: Any) -> None:
    """Security and admission middleware plus the decode semaphore, from ``settings``."""
    from app.web.middleware import UploadAdmission
    from app.web.uploads import decode_slots_for, set_decode_slots

    set_decode_slots(decode_slots_for(settings.max_image_pixels, settings.decode_memory_mb * 1024 * 1024))
    app.add_middleware(UploadAdmission, max_inflight=settings.max_inflight_uploads)
    hosts = settings.trusted_hosts or (*default_trusted_hosts(), *TEST_HOSTS)
    app.add_middleware(SecurityMiddleware, trusted_hosts=hosts, cors=settings.cors)
