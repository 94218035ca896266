"""The page cache (app/web/cache.py) and the data version (app/db/version.py) on a real index."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import make_engine, session_factory
from app.db.schema import Layer, Model, Run
from app.db.version import VersionClock, read_data_version
from app.web.app import create_app
from app.web.cache import Entry, PageStore, cacheable_path, page_cache_of


@pytest.fixture
def db_copy(tiny_db, tmp_path):
    path = tmp_path / "copy.db"
    shutil.copy(tiny_db.path, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def app_client(db_copy) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(Settings(db_url=db_copy))
    app.state.data_version.ttl = 0.0  # re-read the version on every request
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield app, client


def _facts(url: str) -> tuple[str, str]:
    with session_factory(make_engine(url, create=False))() as s:
        model = s.scalars(select(Model)).one()
        layer = s.scalars(select(Layer).where(Layer.model_id == model.id).order_by(Layer.position)).first()
        return model.slug, layer.name


def _finish_a_run(url: str) -> None:
    """What a finished precompute run leaves behind: a ``runs`` row with ``status='done'``."""
    with session_factory(make_engine(url, create=False))() as s:
        model_id = s.scalars(select(Model.id)).one()
        s.add(Run(model_id=model_id, stage="test", params={}, params_hash="x" * 64, status="done",
                  finished_at=datetime(2030, 1, 1)))  # fmt: skip
        s.commit()


def test_cacheable_paths():
    pages = ("/", "/.json", "/models/demo", "/models/demo.json", "/models/demo/layers/l4", "/search",
             "/search.json", "/models/demo/layers/l4/neurons/3.json", "/models/demo/multimodal")  # fmt: skip
    for path in pages:
        assert cacheable_path(path), path
    for path in ("/analyze", "/analyses/abc", "/typographic", "/-/health", "/static/app.css",
                 "/blobs/ab.png", "/models/demo/layers/l4/neurons/3/featurevis",
                 "/models/demo/layers/l4/neurons/3/featurevis.json", "/searchx"):  # fmt: skip
        assert not cacheable_path(path), path


def test_store_is_bounded_by_bytes_and_cleared_on_new_version():
    store = PageStore(max_bytes=10_000)
    store.set_version("a")
    for i in range(20):
        store.put(("k", i), Entry(200, [], b"x" * 1000, b'"e"'))
    assert store.bytes <= 10_000 and len(store.entries) < 20
    assert store.get(("k", 19)) is not None and store.get(("k", 0)) is None  # oldest evicted
    store.set_version("b")
    assert store.bytes == 0 and not store.entries


def test_data_version_changes_when_a_run_finishes(db_copy):
    sessions = session_factory(make_engine(db_copy, create=False))
    with sessions() as s:
        before = read_data_version(s)
    clock = VersionClock(sessions, ttl=3600)
    assert clock.current() == before
    _finish_a_run(db_copy)
    assert clock.current() == before  # within ttl: not re-read
    clock.invalidate()
    assert clock.current() != before


def test_version_re_read_never_makes_readers_wait(db_copy):
    """In the second half of the ttl one caller re-reads the version (here: a stalled database)
    while the others get the current version at once (no p99 spike once a second under load)."""
    import threading
    import time

    real = session_factory(make_engine(db_copy, create=False))
    gate = threading.Event()
    slow = {"on": False}

    def sessions():
        if slow["on"]:
            gate.wait(10)
        return real()

    clock = VersionClock(sessions, ttl=6.0)
    first = clock.current()
    time.sleep(3.1)  # past half the ttl: the next caller refreshes ahead
    slow["on"] = True
    reader = threading.Thread(target=clock.current)
    reader.start()
    deadline = time.monotonic() + 5
    while not clock._lock.locked() and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.01)
    assert clock._lock.locked()  # noqa: SLF001 - the re-read is in progress
    assert clock.fresh()
    started = time.monotonic()
    assert clock.current() == first
    assert time.monotonic() - started < 0.5
    gate.set()
    reader.join(10)
    assert not reader.is_alive()


async def test_pages_cached_with_etag_and_304(app_client, db_copy):
    app, client = app_client
    slug, layer = _facts(db_copy)
    for url in (f"/models/{slug}", f"/models/{slug}.json", f"/models/{slug}/layers/{layer}/neurons/0",
                f"/models/{slug}/layers/{layer}/neurons/0.json"):  # fmt: skip
        first = await client.get(url)
        assert first.status_code == 200, url
        etag = first.headers["etag"]
        assert "HX-Request" in first.headers["vary"]
        second = await client.get(url)
        assert second.content == first.content and second.headers["etag"] == etag
        assert second.headers["content-type"] == first.headers["content-type"]
        again = await client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert (await client.get(url, headers={"If-None-Match": '"other"'})).status_code == 200
        head = await client.head(url, headers={"If-None-Match": etag})
        assert head.status_code == 304
    stats = page_cache_of(app).store.stats()
    assert stats["hits"] >= 12 and stats["entries"] == 4


async def test_cache_respects_query_and_htmx(app_client, db_copy):
    app, client = app_client
    slug, layer = _facts(db_copy)
    url = f"/models/{slug}/layers/{layer}"
    page = await client.get(url)
    fragment = await client.get(url, headers={"HX-Request": "true"})
    assert page.status_code == fragment.status_code == 200
    assert "<html" in page.text.lower() and "<html" not in fragment.text.lower()
    assert (await client.get(url)).content == page.content
    assert (await client.get(url, headers={"HX-Request": "true"})).content == fragment.content
    sorted_page = await client.get(url, params={"sort": "max"})
    assert sorted_page.content != page.content
    assert (await client.get(url, params={"sort": "max"})).content == sorted_page.content


async def test_errors_and_posts_are_not_cached(app_client, db_copy):
    app, client = app_client
    slug, _ = _facts(db_copy)
    for _ in range(2):
        missing = await client.get(f"/models/{slug}/layers/nope")
        assert missing.status_code == 404 and "etag" not in missing.headers
    cache = page_cache_of(app)
    assert cache is not None and cache.store.stats()["entries"] == 0
    await client.post("/analyze", content=b"x")
    assert cache.store.stats()["entries"] == 0


async def test_a_finished_run_shows_without_restart(app_client, db_copy):
    app, client = app_client
    slug, _ = _facts(db_copy)
    first = await client.get(f"/models/{slug}.json")
    assert (await client.get(f"/models/{slug}.json")).headers["etag"] == first.headers["etag"]
    _finish_a_run(db_copy)  # another process finishing a precompute stage
    after = await client.get(f"/models/{slug}.json", headers={"If-None-Match": first.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != first.headers["etag"]


def test_server_caches_follow_the_data_version(db_copy):
    """Issue 14.7: percentiles (live model contexts), directions, atlas layouts and recipe centres
    are kept with ``versioned_cache``: a finished run rebuilds them without a restart."""
    from app.web.cache import versioned_cache
    from app.web.state import model_contexts

    app = create_app(Settings(db_url=db_copy))
    app.state.data_version.ttl = 0.0
    request = SimpleNamespace(app=app)
    built = []
    first = versioned_cache(request, "test", lambda: built.append(1) or object())
    contexts = model_contexts(request)
    assert versioned_cache(app, "test", object) is first and model_contexts(request) is contexts
    _finish_a_run(db_copy)
    assert versioned_cache(app, "test", object) is not first
    assert model_contexts(request) is not contexts
    assert len(built) == 1
