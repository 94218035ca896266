"""Optional per-client rate limit: a token bucket per client address (``--rate-limit``).

Off by default (``Settings.rate_limit_per_minute == 0``). When on, each client address gets a
bucket of ``rate_limit_burst`` tokens refilled at ``rate_limit_per_minute`` per minute; every
request except static files, blobs, ``robots.txt`` and ``/-/health`` takes one, and an empty
bucket answers 429 with ``Retry-After``. Loopback clients (the machine itself, a reverse proxy
on it, tests) are never limited. Buckets live in this process (one per worker) and idle ones are
dropped, so memory stays bounded.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from typing import Any

Scope = dict[str, Any]
EXEMPT_PREFIXES = ("/static/", "/blobs/", "/robots.txt", "/-/health")
MAX_BUCKETS = 100_000


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class TokenBuckets:
    """``address -> (tokens, last refill)``; thread-safe."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, int(burst))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                allowed = 0.0
            else:
                self._buckets[key] = (tokens, now)
                allowed = (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
            if len(self._buckets) > MAX_BUCKETS:  # drop full (idle) buckets first
                full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
                for k in full[: len(self._buckets) // 2] or list(self._buckets)[: len(self._buckets) // 2]:
                    del self._buckets[k]
            return allowed


class RateLimit:
    """ASGI middleware over :class:`TokenBuckets`."""

    def __init__(self, app: Any, *, per_minute: float, burst: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(per_minute, burst)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        host = (scope.get("client") or (None, None))[0]
        if is_loopback(host):
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(str(host))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        body = b"Too many requests from your address; slow down."
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, math.ceil(wait))).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install_rate_limit(app: Any, settings: Any) -> None:
    """Add the limit when ``settings.rate_limit_per_minute`` > 0 (else nothing)."""
    if getattr(settings, "rate_limit_per_minute", 0) > 0:
        app.add_middleware(
            RateLimit, per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
        )
