"""Meta pages under ``/-/``: health and versions."""

from __future__ import annotations

import asyncio
import logging
import platform
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db.health import served_models_with
from app.web.formats import SafeJSONResponse, html_page, respond
from app.web.routing import page
from app.web.state import app_cache

router = APIRouter()
log = logging.getLogger("conceptscope.web")

PACKAGES = ("conceptscope", "torch", "open_clip_torch", "fastapi", "starlette", "uvicorn", "sqlalchemy",
            "jinja2", "pillow", "numpy")


def runner_health(runner: object) -> str:
    """``not loaded`` (no runner), ``ready``, ``starting`` or ``error: ...``."""
    if runner is None:
        return "not loaded"
    if getattr(runner, "running", True):
        return "ready"
    error = getattr(runner, "error", None)  # the detail is in the server log, never in answers
    return "error: the live model could not be loaded" if error else "starting"


def _health_executor(request: Request) -> ThreadPoolExecutor:
    # health reads on a thread of its own: a pool full of uploads waiting to decode, or pages
    # waiting on the DB, never holds the health check up (issue 14 §5)
    return app_cache(request, "health_executor",
                     lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="health"))


@page(router, "/-/health")
async def health(request: Request, fmt: str | None) -> Response:
    """Liveness and what is served: ``{"ok": true, "models": [...], "live": ...}`` (JSON with or
    without the ``.json`` suffix)."""
    loop = asyncio.get_running_loop()
    try:
        models = await loop.run_in_executor(_health_executor(request), served_models_with,
                                            request.app.state.sessions)
        db_ok = True
    except Exception:  # the DB is unreadable: say so, with 503 (the exception goes to the log only)
        log.exception("health check: the database cannot be read")
        return SafeJSONResponse({"ok": False, "db": "error: the database cannot be read"}, status_code=503)
    return SafeJSONResponse({"ok": db_ok, "db": "ok", "models": models,
                             "live": runner_health(request.app.state.live_runner)})


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions_data(request: Request) -> dict[str, object]:
    urls = request.app.state.urls
    htmx = urls.static_dir / "vendor" / "htmx" / "VERSION"
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in PACKAGES},
        "htmx": htmx.read_text().split()[1] if htmx.exists() else None,
        "database": request.app.state.engine.dialect.name,
        "live": runner_health(request.app.state.live_runner),
    }


@page(router, "/-/versions")
def versions(request: Request, fmt: str | None) -> Response:
    """Versions of Python, SQLite and the main packages (``/-/versions.json`` for JSON)."""
    urls = request.app.state.urls
    return respond(request, "versions.html", versions_data(request), fmt=fmt,
                   json_url=urls.versions("json"), html_url=urls.versions())


@router.get("/-/docs", include_in_schema=False)
def api_docs(request: Request) -> Response:
    """The API docs: vendored Swagger UI over ``/-/openapi.json`` (nothing loaded from elsewhere)."""
    urls = request.app.state.urls
    version = urls.static_dir / "vendor" / "swagger-ui" / "VERSION"
    return html_page(
        request,
        "docs.html",
        {
            "title": "API docs",
            "openapi_url": request.app.openapi_url or "/-/openapi.json",
            "swagger_version": " ".join(version.read_text().split()[:2]) if version.exists() else "",
        },
    )
