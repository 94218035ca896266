"""``create_app``: the FastAPI application over one index database.

``app.state`` holds ``settings``, ``engine`` / ``sessions`` (read-only), ``write_engine`` /
``write_sessions`` (may write only the tables the web owns: analyses and their image blobs),
``templates``, ``urls``, ``live_runner`` (or ``None``), ``nav`` and ``route_paths``.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import STATIC_DIR, TEMPLATES_DIR, Settings
from app.db import make_engine, session_factory
from app.db.analyses import ensure_web_tables
from app.db.version import VersionClock
from app.web import search_warmup, views
from app.web.cache import install_page_cache
from app.web.csrf import install_csrf
from app.web.deps import strict_query_ints
from app.web.errors import install_error_handlers
from app.web.middleware import HeadAsGet
from app.web.openapi import install_openapi
from app.web.ratelimit import install_rate_limit
from app.web.security import install_security
from app.web.templating import install_template_helpers
from app.web.urls import Urls

log = logging.getLogger("conceptscope.web")

#: Tables the web process may write; everything else is read-only to it.
WEB_OWNED_TABLES = frozenset({"analyses", "blobs", "feature_visualizations", "featurevis_jobs"})
# feature_visualizations: rendered on demand by app/web/views/featurevis.py when none is stored


class ReadOnlyViolation(RuntimeError):
    """The web process tried to write a table it does not own."""


def sqlite_path(db_url: str) -> Path | None:
    """The file behind an ``sqlite:///`` URL (``None`` for in-memory or other databases)."""
    if not db_url.startswith("sqlite:///"):
        return None
    path = db_url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _read_only_connection(engine: Engine) -> None:
    """Every connection of ``engine`` refuses writes at the database level."""
    dialect = engine.dialect.name

    @event.listens_for(engine, "connect")
    def _set_read_only(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if dialect == "sqlite":
            cursor.execute("PRAGMA query_only = ON")
        elif dialect == "postgresql":
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cursor.close()


def _guard_owned_tables(factory: sessionmaker[Session]) -> None:
    @event.listens_for(factory, "before_flush")
    def _check(session: Session, _context: Any, _instances: Any) -> None:
        for obj in (*session.new, *session.dirty, *session.deleted):
            table = getattr(getattr(obj, "__table__", None), "name", None)
            if table not in WEB_OWNED_TABLES:
                raise ReadOnlyViolation(f"the web app may not write table {table!r}")


def open_database(settings: Settings) -> tuple[Engine, sessionmaker[Session], Engine, sessionmaker[Session]]:
    """Read-only and web-writable engines/session factories for ``settings.db_url``."""
    path = sqlite_path(settings.db_url)
    if path is not None and not path.exists():
        raise FileNotFoundError(
            f"no index database at {path}; build one with "
            "`conceptscope precompute activations --db PATH ...` or run `conceptscope demo`"
        )
    write_engine = make_engine(settings.db_url, create=False)
    try:
        ensure_web_tables(write_engine)  # analyses, featurevis_jobs (app.db.analyses)
    except Exception as exc:  # e.g. a read-only file: pages still work, analyses are not stored
        log.warning("cannot create the analyses table (%s); analyses will not be stored", exc)
    write_sessions = session_factory(write_engine)
    _guard_owned_tables(write_sessions)
    engine = make_engine(settings.db_url, create=False)
    _read_only_connection(engine)
    return engine, session_factory(engine), write_engine, write_sessions


def create_app(settings: Settings, *, live_runner: Any = None, freeze_gc: bool = False) -> FastAPI:
    """The web app over ``settings.db_url``; ``live_runner`` serves the live pages (optional).

    A runner with ``start()``/``stop()`` (sync or async) is started and stopped with the app; if
    it fails to start, the app still serves the precomputed pages. ``freeze_gc`` (for a server
    process, not tests): once started, move everything alive (modules, the model, templates) out
    of the cyclic GC's reach (``gc.freeze()``), so that the full collections that request
    allocations trigger do not rescan it all (a measurable share of a live request's CPU).
    """
    engine, sessions, write_engine, write_sessions = open_database(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await _maybe_call(live_runner, "start")
        except Exception as exc:  # browsing still works; live pages and /-/health say why
            log.warning("live model not started: %s", exc)
        await search_warmup.warm_up(app)  # the search's per-model preparation, in the background
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await search_warmup.stop(app)
            await _maybe_call(live_runner, "stop")
            engine.dispose()
            write_engine.dispose()

    app = FastAPI(
        title="Conceptscope",
        lifespan=lifespan,
        docs_url=None,  # /-/docs is served by app/web/views/meta.py (vendored Swagger UI, no CDN)
        redoc_url=None,
        openapi_url="/-/openapi.json",
        dependencies=[Depends(strict_query_ints)],  # app.web.deps: ids and counts parsed strictly
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.write_engine = write_engine
    app.state.write_sessions = write_sessions
    app.state.live_runner = live_runner
    app.state.urls = Urls(STATIC_DIR)
    app.state.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app.state.data_version = VersionClock(sessions)  # app.db.version: keys the caches
    install_page_cache(app)  # inside HeadAsGet and any header middleware added after it
    app.add_middleware(HeadAsGet)
    install_csrf(app)  # app.web.csrf: same-origin browser writes, tokens, JSON POST types
    install_rate_limit(app, settings)  # app.web.ratelimit: per-client token bucket (off unless set)
    # outermost (added last): hosts and headers, so every answer, a 429 too, carries the headers
    install_security(app, settings)  # app.web.security: hosts, headers, CORS, upload admission
    install_error_handlers(app)
    routers = views.routers()
    for router in routers:
        app.include_router(router)
    app.state.nav = views.nav_items(routers)
    app.state.route_paths = views.route_paths(routers)
    install_template_helpers(app)
    install_openapi(app)  # app.web.openapi: HTML pages as text/html, JSON twins with schemas
    return app


async def _maybe_call(obj: Any, method: str) -> None:
    func = getattr(obj, method, None) if obj is not None else None
    if func is None:
        return
    result = func()
    if inspect.isawaitable(result):
        await result
