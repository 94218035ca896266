"""Meta pages under ``/-/``: health and versions."""

from __future__ import annotations

import logging
import platform
import sqlite3
from importlib import metadata

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db.health import served_models
from app.web.deps import ReadSession
from app.web.formats import SafeJSONResponse, html_page, respond
from app.web.routing import page

router = APIRouter()
log = logging.getLogger("conceptscope.web")

PACKAGES = ("conceptscope", "torch", "open_clip_torch", "fastapi", "starlette", "uvicorn", "sqlalchemy",
            "jinja2", "pillow", "numpy")


def live_status(runner: object) -> str:
    """``not loaded`` (no runner), ``ready``, ``starting`` or ``error: ...``."""
    if runner is None:
        return "not loaded"
    if getattr(runner, "running", True):
        return "ready"
    error = getattr(runner, "error", None)  # the detail is in the server log, never in answers
    return "error: the live model could not be loaded" if error else "starting"


@page(router, "/-/health")
def health(request: Request, session: ReadSession, fmt: str | None) -> Response:
    """Liveness and what is served: ``{"ok": true, "models": [...], "live": ...}`` (JSON with or
    without the ``.json`` suffix)."""
    try:
        models = served_models(session)
        db_ok = True
    except Exception:  # the DB is unreadable: say so, with 503 (the exception goes to the log only)
        log.exception("health check: the database cannot be read")
        return SafeJSONResponse({"ok": False, "db": "error: the database cannot be read"}, status_code=503)
    return SafeJSONResponse({"ok": db_ok, "db": "ok", "models": models,
                             "live": live_status(request.app.state.live_runner)})


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
        "live": live_status(request.app.state.live_runner),
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
