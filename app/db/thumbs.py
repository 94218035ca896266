"""Which dataset image a thumbnail shows: pages that show a unit's examples only by their
thumbnail (search results, the multimodal view) offer "analyze this image" with its id."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.schema import Image


def images_by_thumb(session: Session, shas: Iterable[str]) -> dict[str, int]:
    """``thumbnail sha256 -> image id`` (the lowest id where images share a thumbnail)."""
    wanted = sorted({s for s in shas if s})
    if not wanted:
        return {}
    rows = session.execute(
        select(Image.thumb_sha256, func.min(Image.id))
        .where(Image.thumb_sha256.in_(wanted))
        .group_by(Image.thumb_sha256)
    )
    return {sha: int(image_id) for sha, image_id in rows}
