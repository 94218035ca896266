"""``/robots.txt``: crawlers may read the index, not the live pages or their endpoints.

No GET changes state anyway (on-demand renders start only by POST); this keeps well-behaved
crawlers off the pages that cost model time (analyses, search, the typographic lab) and off the
feature visualization fragments.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

router = APIRouter()

ROBOTS = """User-agent: *
Disallow: /analyze
Disallow: /analyses/
Disallow: /search
Disallow: /typographic
Disallow: /-/
Disallow: /*/featurevis
"""


@router.get("/robots.txt", include_in_schema=False)
def robots() -> PlainTextResponse:
    return PlainTextResponse(ROBOTS, headers={"Cache-Control": "public, max-age=86400"})
