"""The OpenAPI document at ``/-/openapi.json``, made accurate in one place.

FastAPI describes every route as returning ``application/json`` with an empty schema. Here the
document is rebuilt from the app's routes and corrected centrally, without touching the views:

- HTML pages are ``text/html`` only (whatever the ``Accept`` header; their data is the ``.json``
  twin, its own operation); JSON twins (``….json``, ``/-/health``, ``/-/oembed``) are
  ``application/json`` with the schemas of :mod:`app.web.schemas`; images (``.png`` previews,
  the atlas sprite ``.jpg``, blobs), exports and ``robots.txt`` have their real media types;
- POST routes get their request bodies (multipart forms; ``/analyze.json`` also a raw image) and
  the ``X-CSRF-Token`` header of browser posts; form posts document their 303 redirect;
- every operation documents its errors (``{"ok": false, "status", "title", "error"}`` as JSON, or
  an HTML error page), so clients can be generated and fuzzers can check every answer.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.web import schemas

#: Routes never documented: static files, the docs page and the document itself.
UNDOCUMENTED_PREFIXES = ("/static/", "/-/docs", "/-/openapi")
#: 5xx answers that are part of a route's contract (documented; anything else 5xx is a bug).
#: None: oEmbed's format other than json is a 400, not the specification's 501 (a 5xx reads as
#: a server error to clients, monitors and fuzzers).
SERVER_ANSWERS: dict[str, dict[str, str]] = {}
HTML = {"text/html": {"schema": {"type": "string"}}}
ERROR_JSON = {"schema": schemas.ERROR}
BINARY = {"schema": {"type": "string", "format": "binary"}}
EXPORT_TYPES = ("application/x-ndjson", "text/csv", "application/vnd.apache.parquet")
#: What a blob can be (:data:`app.db.MIME_EXT`).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
CSRF_HEADER = {
    "name": "X-CSRF-Token",
    "in": "header",
    "schema": {"type": "string"},
    "description": "the visitor's CSRF token (the csrftoken cookie's value); browser posts only",
}


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi` (computed once) as ``app.openapi()``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every :class:`APIRoute` under ``routes`` (included routers walked)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            found.extend(api_routes(inner))
    return found


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with hidden twins included, then corrected (module docstring)."""
    hidden = [r for r in api_routes(app.router.routes)
              if not r.include_in_schema and not r.path.startswith(UNDOCUMENTED_PREFIXES)]  # fmt: skip
    for route in hidden:
        route.include_in_schema = True
    try:
        app.openapi_schema = None
        spec = copy.deepcopy(FastAPI.openapi(app))
    finally:
        for route in hidden:
            route.include_in_schema = False
    spec["info"]["description"] = __doc__.split("\n\n", 1)[0].replace("\n", " ")
    paths: dict[str, dict[str, Any]] = spec.setdefault("paths", {})
    for path, operations in paths.items():
        for method, op in operations.items():
            _describe(path, method, op)
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = schemas.ERROR
    return spec


def kind_of(path: str, method: str) -> str:
    """``json``, ``html``, ``png``, ``jpeg``, ``image`` (blobs), ``export`` or ``text``."""
    if path.endswith(".json") or path in schemas.RESPONSES or (method == "post" and path in
                                                                schemas.POST_RESPONSES):  # fmt: skip
        return "json"
    if path.endswith(".png"):
        return "png"
    if path.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if path.startswith("/blobs/"):
        return "image"
    if "/export/" in path:
        return "export"
    if path.endswith(".txt"):
        return "text"
    return "html"


def _describe(path: str, method: str, op: dict[str, Any]) -> None:
    kind = kind_of(path, method)
    ok: dict[str, Any]
    if kind == "json":
        table = schemas.POST_RESPONSES if method == "post" else schemas.RESPONSES
        schema = table.get(path) or schemas.RESPONSES.get(path) or schemas.ANY_OBJ
        ok = {"application/json": {"schema": schema}}
        error: dict[str, Any] = {"application/json": {"schema": {"anyOf": [schemas.ERROR, schema]}}}
        error_doc = "an error, or the page's own data with a status saying why it is incomplete"
        if not path.endswith(".json"):  # JSON by default; errors follow the client's Accept
            error.update(HTML)
    else:
        if kind == "html":
            ok = dict(HTML)
        elif kind == "png":
            ok = {"image/png": BINARY}
        elif kind == "jpeg":
            ok = {"image/jpeg": BINARY}
        elif kind == "image":
            ok = {t: BINARY for t in IMAGE_TYPES}
        elif kind == "export":
            ok = {t: BINARY for t in EXPORT_TYPES}
        else:
            ok = {"text/plain": {"schema": {"type": "string"}}}
        error = {"application/json": ERROR_JSON, **HTML}
        error_doc = "an error: an HTML page, or JSON when the client asks for it (Accept)"
    responses: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
    if method == "post" and kind == "html":
        responses["303"] = {
            "description": "done: see the result page",
            "headers": {"Location": {"schema": {"type": "string"}, "description": "the result's URL"}},
        }
        responses["200"]["description"] = "the form again, with what went wrong"
    if method == "get" and kind != "export" and path != "/robots.txt":
        responses["304"] = {"description": "not modified (ETag matched If-None-Match)"}
    for status, why in SERVER_ANSWERS.get(path, {}).items():
        responses[status] = {"description": why, "content": error}
    responses["default"] = {"description": error_doc, "content": error}
    op["responses"] = responses
    for parameter in op.get("parameters", []):  # corrected query parameter schemas
        declared = schemas.QUERY_PARAMETERS.get(path, {}).get(parameter.get("name"))
        if declared is not None and parameter.get("in") == "query":
            parameter["schema"] = declared
    bodies = schemas.REQUEST_BODIES.get(path) if method == "post" else None
    if bodies is not None:
        op["requestBody"] = {
            "required": path not in schemas.OPTIONAL_BODIES,
            "content": {media: {"schema": schema} for media, schema in bodies.items()},
        }
    if method == "post" and kind == "html":  # a browser post: the token as a header (or form field)
        header = {**CSRF_HEADER, "required": "csrf_token" not in _fields(bodies)}
        op["parameters"] = [*op.get("parameters", []), header]


def _fields(bodies: dict[str, Any] | None) -> set[str]:
    return {name for schema in (bodies or {}).values() for name in schema.get("properties", {})}
