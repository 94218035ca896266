"""``/blobs/{sha256}.{ext}``: content-addressed image bytes, cached forever."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db import MIME_EXT, queries
from app.web.deps import ReadSession
from app.web.errors import NotFound
from app.web.etags import IMMUTABLE, etag_matches

router = APIRouter()

_NAME = re.compile(r"([0-9a-f]{64})\.([a-z0-9]{1,5})")


@router.get("/blobs/{name}")
def blob(name: str, request: Request, session: ReadSession) -> Response:
    """The bytes of a blob; ``ext`` must match its type (png, jpg, webp)."""
    match = _NAME.fullmatch(name)
    if not match:
        raise NotFound(f"{name!r} is not a blob name (expected <sha256>.<ext>).")
    sha, ext = match.groups()
    etag = f'"{sha}"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag}
    meta = queries.blob_meta(session, sha)
    if meta is None or MIME_EXT.get(meta[0], "bin") != ext:
        raise NotFound(f"No blob {sha}.{ext}.")
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    found = queries.blob_bytes(session, sha)
    assert found is not None
    mime, data = found
    return Response(content=data, media_type=mime, headers=headers)
