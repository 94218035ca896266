"""HTML or JSON: ``X.json`` path parameters, JSON twins, ``Link`` headers and htmx fragments.

A page view builds one plain ``data`` dict and calls :func:`respond`; the same dict is the JSON
twin and the template's ``data``, so the two never drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

JSON_SUFFIX = ".json"


def is_htmx(request: Request) -> bool:
    """An htmx request that is not a history restore (those need the full page)."""
    return request.headers.get("hx-request") == "true" and request.headers.get(
        "hx-history-restore-request"
    ) != "true"


def wants_json(request: Request) -> bool:
    """For error pages: the path has a ``.json`` suffix or the client asks only for JSON."""
    if request.url.path.endswith(JSON_SUFFIX):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def link_header(url: str, rel: str = "alternate", mime: str = "application/json") -> str:
    return f'<{url}>; rel="{rel}"; type="{mime}"'


def _clean(value: Any) -> Any:
    """Make data JSON-safe: NaN/inf → null, numpy scalars → Python numbers."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # fast path (most values)
        return value
    if kind is dict:
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _clean(value.item())
    return value


class SafeJSONResponse(JSONResponse):
    """JSON with NaN/inf as null and a stable, compact layout."""

    def render(self, content: Any) -> bytes:
        # compact: ``indent`` would switch json to its pure-Python encoder (5-10x slower on a page)
        data = _clean(content)
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def respond(
    request: Request,
    template: str,
    data: dict[str, Any],
    *,
    fmt: str | None,
    json_url: str,
    html_url: str | None = None,
    fragment: str | None = None,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    """The page as JSON (``fmt == "json"``), as an htmx fragment, or as a full HTML page.

    ``data`` is the JSON twin and ``data`` in the template; ``context`` holds template-only
    extras (never DB handles). ``fragment`` names the partial template an htmx request to this
    URL gets instead of the page; such pages vary by ``HX-Request``.
    """
    if fmt == "json":
        headers = {"Access-Control-Allow-Origin": "*"}  # public, read-only data: usable from notebooks
        if html_url:
            headers["Link"] = link_header(html_url, "alternate", "text/html")
        return SafeJSONResponse(data, status_code=status_code, headers=headers)
    templates = request.app.state.templates
    headers = {"Link": link_header(json_url)}
    if fragment:
        headers["Vary"] = "HX-Request"
    name = fragment if fragment and is_htmx(request) else template
    ctx = {"data": data, "json_url": json_url, **(context or {})}
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code, headers=headers)
    return response


def html_page(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A plain HTML page with no JSON twin (forms, errors)."""
    templates = request.app.state.templates
    return templates.TemplateResponse(request, template, context, status_code=status_code)
