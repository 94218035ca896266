"""Browser writes are same-origin (issue 14): CSRF tokens, Origin checks, JSON content types,
unguessable analysis ids.

The app runs in-process (``httpx.ASGITransport``) on a copy of the tiny index, without a live
model: every refusal here happens before any model work.
"""

from __future__ import annotations

import os
import re
import stat

import httpx
import pytest

from app.config import Settings, server_secret
from app.db.analyses import analysis_id
from app.web.app import create_app
from app.web.csrf import PLACEHOLDER
from tests.csrf_support import TOKEN
from tests.live_support import copy_db

BASE = "http://localhost"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def app(tiny_db, tmp_path):
    app = create_app(Settings(db_url=copy_db(tiny_db.path, tmp_path), data_dir=tmp_path / "data"))
    yield app
    app.state.engine.dispose()
    app.state.write_engine.dispose()


def client(app, **options) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, **options)


def post_routes(app) -> list[str]:
    from tests.test_get_walk import fill

    paths = []
    stack = list(app.routes)
    while stack:
        route = stack.pop()
        inner = getattr(getattr(route, "original_router", route), "routes", None)
        if inner is not None and not hasattr(route, "endpoint"):
            stack += list(inner)
        elif "POST" in (getattr(route, "methods", None) or ()):
            paths.append(fill(route.path, {"model": "demo", "layer": "layer4.5", "unit": "5"}))
    return sorted(paths)


async def test_pages_carry_the_visitors_own_token(app) -> None:
    async with client(app) as c:
        first = await c.get("/analyze")
        token = first.cookies.get("csrftoken")
        assert token and re.fullmatch(r"[0-9a-f]{32}", token)
        cookie = first.headers["set-cookie"].lower()
        assert "samesite=strict" in cookie and "httponly" in cookie
        assert f'name="csrf_token" value="{token}"' in first.text and PLACEHOLDER not in first.text
        again = await c.get("/analyze")  # the cookie is sent back: same token, no new cookie
        assert "set-cookie" not in again.headers and f'value="{token}"' in again.text
    async with client(app) as other:
        theirs = (await other.get("/analyze")).cookies.get("csrftoken")
        assert theirs and theirs != token  # each visitor has their own


async def test_form_posts_need_the_token(app) -> None:
    files = {"image": ("x.png", PNG, "image/png")}
    async with client(app) as c:
        token = (await c.get("/analyze")).cookies["csrftoken"]
        missing = await c.post("/analyze", files=files)
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = await c.post("/analyze", files=files, data={"csrf_token": "f" * 32})
        assert wrong.status_code == 403
        ok = await c.post("/analyze", files=files, data={"csrf_token": token})
        assert ok.status_code == 503 and "without a live model" in ok.text  # past the check
        by_header = await c.post("/analyze", files=files, headers={"X-CSRF-Token": token})
        assert by_header.status_code == 503
        typo = await c.post("/typographic", files=files, data={"word": "red"})
        assert typo.status_code == 403


async def test_cross_site_writes_are_refused_on_every_post_route(app) -> None:
    routes = post_routes(app)
    assert "/analyze" in routes and "/analyze.json" in routes and "/typographic" in routes
    assert any(r.endswith("/featurevis") for r in routes)
    cookies = {"csrftoken": TOKEN}
    async with client(app, cookies=cookies, headers={"X-CSRF-Token": TOKEN}) as c:
        for path in routes:
            for headers in (
                {"Origin": "http://evil.example"},
                {"Origin": "null"},
                {"Sec-Fetch-Site": "cross-site"},
            ):
                response = await c.post(path, files={"image": ("x.png", PNG, "image/png")}, headers=headers)
                assert response.status_code == 403, (path, headers, response.status_code)
        same = await c.post(
            "/analyze.json", content=PNG, headers={"Origin": BASE, "Content-Type": "image/png"}
        )
        assert same.status_code == 503  # same origin: accepted (no live model here)


async def test_json_posts_need_a_json_multipart_or_image_type(app) -> None:
    async with client(app) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "text/plain; charset=utf-8"):
            response = await c.post("/analyze.json", content=PNG, headers={"Content-Type": ctype})
            assert response.status_code == 415, ctype
        for ctype in ("image/png", "application/octet-stream"):
            response = await c.post("/analyze.json", content=PNG, headers={"Content-Type": ctype})
            assert response.status_code == 503, ctype  # accepted; no live model in this app
        multipart = await c.post("/analyze.json", files={"image": ("x.png", PNG, "image/png")})
        assert multipart.status_code == 503


def test_analysis_ids_are_keyed_by_a_secret_kept_in_the_data_dir(tmp_path) -> None:
    data_dir = tmp_path / "data"
    secret = server_secret(data_dir)
    assert len(secret) == 32 and server_secret(data_dir) == secret  # created once, then reused
    mode = stat.S_IMODE(os.stat(data_dir / "secret.key").st_mode)
    assert mode == 0o600
    other = server_secret(tmp_path / "elsewhere")
    assert other != secret
    ids = {analysis_id(secret, "demo", b"photo"), analysis_id(other, "demo", b"photo")}
    assert len(ids) == 2  # nobody without the secret computes the id in advance
    assert analysis_id(secret, "demo", b"photo") == analysis_id(secret, "demo", b"photo")
    assert re.fullmatch(r"[0-9a-f]{24}", analysis_id(secret, "demo", b"photo"))
    # what shapes the stored result is part of the id: another top_k never lands on this permalink
    def with_top_k(k: int) -> str:
        return analysis_id(secret, "demo", b"photo", {"top_k": k})

    assert with_top_k(1) != with_top_k(64) and with_top_k(8) == with_top_k(8)
