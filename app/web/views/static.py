"""``/static/{hash}/{path}``: static files under content-hashed, immutable URLs.

``urls.static(path)`` puts the file's current content hash in the URL. A request whose hash
matches is cached forever; a stale hash still gets the current file, but uncached.
"""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.web.errors import NotFound
from app.web.etags import IMMUTABLE, etag_matches
from app.web.urls import static_file_hash

router = APIRouter()

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/css", ".css")


@router.get("/static/{digest}/{path:path}", include_in_schema=False)
def static_file(digest: str, path: str, request: Request) -> Response:
    root = request.app.state.urls.static_dir.resolve()
    try:
        target = (root / path).resolve()
        found = target.is_relative_to(root) and target.is_file()
    except (OSError, ValueError):  # NUL bytes, names too long, ...
        found = False
    if not found:
        raise NotFound(f"No static file {path[:200]!r}.")
    current = static_file_hash(target)
    etag = f'"{current}"'
    cache = IMMUTABLE if digest == current else "no-cache"
    headers = {"Cache-Control": cache, "ETag": etag}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return Response(content=target.read_bytes(), media_type=mime, headers=headers)
