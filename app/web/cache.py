"""A page cache: rendered GET responses kept as bytes, keyed on the index's data version.

An index does not change between precompute runs, so a page is computed once per data version
(:mod:`app.db.version`) and then served as stored bytes, with an ``ETag`` (``If-None-Match`` →
``304``). The key holds everything a response may depend on: data version, live-model state,
host, scheme, path, query string, ``HX-Request`` / ``HX-History-Restore-Request`` and ``Accept``.

Stored: only ``GET``/``HEAD`` answers with status 200 on a page path (:func:`cacheable_path`),
without ``Set-Cookie`` and without ``Cache-Control: no-store`` or ``private`` (a view opts out by
sending either). Never stored: POSTs, errors, live pages (``/analyze``, ``/analyses``,
``/typographic``, on-demand ``/featurevis``), ``/-/`` meta routes, static files and blobs. Memory
is bounded: least recently used entries go first once the stored bytes pass ``max_bytes``.
Concurrent misses of one key are computed once (the others wait for it).

``CONCEPTSCOPE_PAGE_CACHE_MB`` sets the bound (default 64; ``0`` turns the cache off).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from app.web.state import versioned_cache as versioned_cache  # lives in app.web.state (old import path)

T = TypeVar("T")

Scope = dict[str, Any]
Message = dict[str, Any]

DEFAULT_MAX_MB = 64.0
MAX_ENTRY_BYTES = 4 * 1024 * 1024
ENV_MAX_MB = "CONCEPTSCOPE_PAGE_CACHE_MB"

_PAGE_PATHS = re.compile(
    r"^/(?:$|\.json$|models(?:\.json)?(?:/|$)|search(?:\.json)?$|lists(?:\.json)?$|embed/)"
)
_NEVER = re.compile(r"/featurevis(?:\.json)?$|^/(?:analy|typographic|-/|static/|blobs/)")
_VARY = ("HX-Request", "Accept")


def cacheable_path(path: str) -> bool:
    """Whether GETs of ``path`` may be stored (a page, not a live or meta route)."""
    return bool(_PAGE_PATHS.match(path)) and not _NEVER.search(path)


@dataclass
class Entry:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    etag: bytes

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 200


class PageStore:
    """An LRU of :class:`Entry` bounded by bytes; cleared when the data version changes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.version: str | None = None
        self.entries: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def set_version(self, version: str) -> None:
        if version != self.version:
            self.entries.clear()
            self.bytes = 0
            self.version = version

    def get(self, key: tuple[Any, ...]) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return entry

    def put(self, key: tuple[Any, ...], entry: Entry) -> None:
        if entry.size > min(self.max_bytes, MAX_ENTRY_BYTES):
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self.entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes and self.entries:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.size

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}


def max_bytes_from_env() -> int:
    try:
        mb = float(os.environ.get(ENV_MAX_MB, DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return max(0, int(mb * 1024 * 1024))


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return b""


def _etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == b"*":
        return True
    tags = [t.strip().removeprefix(b"W/") for t in if_none_match.split(b",")]
    return etag in tags


def _live_state(app: Any) -> tuple[Any, ...]:
    runner = getattr(getattr(app, "state", None), "live_runner", None)
    if runner is None:
        return ()
    return (bool(getattr(runner, "running", False)), str(getattr(runner, "slug", "")))


def _storable(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    if status != 200:
        return False
    for key, value in headers:
        k = key.lower()
        if k == b"set-cookie":
            return False
        if k == b"cache-control" and (b"no-store" in value.lower() or b"private" in value.lower()):
            return False
    return True


def _with_cache_headers(headers: list[tuple[bytes, bytes]], etag: bytes) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k.lower() not in (b"etag", b"vary")]
    vary = [v.decode("latin-1") for k, v in headers if k.lower() == b"vary"]
    names = {n.strip().lower() for v in vary for n in v.split(",") if n.strip()}
    merged = [n.strip() for v in vary for n in v.split(",") if n.strip()]
    merged += [n for n in _VARY if n.lower() not in names]
    out.append((b"vary", ", ".join(merged).encode("latin-1")))
    out.append((b"etag", etag))
    if not any(k.lower() == b"cache-control" for k, _ in out):
        out.append((b"cache-control", b"no-cache"))
    return out


def _not_modified_headers(entry: Entry) -> list[tuple[bytes, bytes]]:
    keep = (b"etag", b"vary", b"cache-control", b"link", b"content-location")
    return [(k, v) for k, v in entry.headers if k.lower() in keep]


class PageCache:
    """ASGI middleware serving stored page responses (see the module docstring)."""

    def __init__(self, app: Any, max_bytes: int | None = None) -> None:
        self.app = app
        self.store = PageStore(max_bytes_from_env() if max_bytes is None else max_bytes)
        self.pending: dict[tuple[Any, ...], asyncio.Future[None]] = {}

    @property
    def enabled(self) -> bool:
        return self.store.max_bytes > 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not cacheable_path(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        app = scope.get("app")
        clock = getattr(getattr(app, "state", None), "data_version", None)
        if clock is None:
            await self.app(scope, receive, send)
            return
        version = clock.current() if clock.fresh() else await run_in_threadpool(clock.current)
        self.store.set_version(version)
        key = (
            _live_state(app),
            scope.get("scheme"),
            _header(scope, b"host"),
            scope.get("root_path", ""),
            scope["path"],
            scope.get("query_string", b""),
            _header(scope, b"hx-request"),
            _header(scope, b"hx-history-restore-request"),
            _header(scope, b"accept"),
        )
        if_none_match = _header(scope, b"if-none-match")
        for _ in range(2):
            entry = self.store.get(key)
            if entry is not None:
                await self._send_entry(entry, if_none_match, send)
                return
            waiting = self.pending.get(key)
            if waiting is None:
                break
            await asyncio.shield(waiting)  # another request is computing this page
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            await self._miss(scope, receive, send, key, version, if_none_match)
        finally:
            self.pending.pop(key, None)
            future.set_result(None)

    async def _send_entry(self, entry: Entry, if_none_match: bytes, send: Any) -> None:
        if _etag_matches(if_none_match, entry.etag):
            headers = _not_modified_headers(entry)
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": entry.status, "headers": entry.headers})
        await send({"type": "http.response.body", "body": entry.body})

    async def _miss(
        self, scope: Scope, receive: Any, send: Any, key: tuple[Any, ...], version: str, if_none_match: bytes
    ) -> None:
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        buffering = False

        async def capture(message: Message) -> None:
            nonlocal start, size, buffering
            if message["type"] == "http.response.start":
                start = message
                buffering = _storable(message["status"], list(message.get("headers", [])))
                if not buffering:
                    await send(message)
                return
            if message["type"] != "http.response.body" or not buffering:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ENTRY_BYTES:  # too big to keep: pass it on as it comes
                buffering = False
                assert start is not None
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                chunks.clear()
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            assert start is not None
            raw_headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
            digest = hashlib.blake2b(body, digest_size=12)
            digest.update(version.encode())
            etag = b'"' + digest.hexdigest().encode() + b'"'
            entry = Entry(start["status"], _with_cache_headers(raw_headers, etag), body, etag)
            if self.store.version == version:
                self.store.put(key, entry)
            await self._send_entry(entry, if_none_match, send)

        await self.app(scope, receive, capture)


def install_page_cache(app: Any, max_bytes: int | None = None) -> None:
    """Add :class:`PageCache` to a FastAPI app (call before adding outer middleware)."""
    app.add_middleware(PageCache, max_bytes=max_bytes)


def page_cache_of(app: Any) -> PageCache | None:
    """The app's :class:`PageCache` instance, once the middleware stack is built (for tests)."""
    node = getattr(app, "middleware_stack", None)
    while node is not None:
        if isinstance(node, PageCache):
            return node
        node = getattr(node, "app", None)
    return None
