"""The optional per-client rate limit (issue 14): a token bucket per address, off for loopback."""

from __future__ import annotations

import httpx
import pytest

from app.config import Settings
from app.web.app import create_app
from app.web.ratelimit import TokenBuckets, is_loopback
from tests.live_support import copy_db


def test_token_bucket_allows_a_burst_then_refills() -> None:
    buckets = TokenBuckets(per_minute=60, burst=3)  # one token per second
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a", now=0.0)
    assert wait == pytest.approx(1.0)
    assert buckets.take("b", now=0.0) == 0.0  # per client
    assert buckets.take("a", now=1.01) == 0.0  # refilled
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("203.0.113.9")


@pytest.mark.parametrize("client_host, limited", [("203.0.113.9", True), ("127.0.0.1", False)])
async def test_requests_beyond_the_burst_get_429_except_from_loopback(
    tiny_db, tmp_path, client_host, limited
):
    settings = Settings(db_url=copy_db(tiny_db.path, tmp_path)).with_(
        rate_limit_per_minute=6, rate_limit_burst=2
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=(client_host, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        answers = [await c.get("/.json") for _ in range(4)]
        health = (await c.get("/-/health")).status_code
    codes = [r.status_code for r in answers]
    if limited:
        assert codes[:2] == [200, 200] and codes[2:] == [429, 429] and health != 429
        refused = answers[-1].headers  # a 429 carries the same security headers as any answer
        assert "content-security-policy" in refused and refused["x-content-type-options"] == "nosniff"
    else:
        assert codes == [200] * 4
    app.state.engine.dispose()
    app.state.write_engine.dispose()


async def test_off_by_default(tiny_db, tmp_path) -> None:
    app = create_app(Settings(db_url=copy_db(tiny_db.path, tmp_path)))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        assert all([(await c.get("/.json")).status_code == 200 for _ in range(30)])
    app.state.engine.dispose()
    app.state.write_engine.dispose()
