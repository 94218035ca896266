"""``thumbnail URL -> dataset image id`` for pages that show examples only by their thumbnail
(search results, the multimodal view), so their "analyze this image" buttons can name the image
(template-only context: the JSON twins are unchanged)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from app.db.thumbs import images_by_thumb
from app.web.urls import Urls


def example_ids(urls: Urls, session: Any, thumb_urls: Iterable[str | None]) -> dict[str, int]:
    """Blocking (a read of ``session``): call from a worker thread."""
    shas = {url: sha for url in thumb_urls if url and (sha := urls.blob_sha(url))}
    ids = images_by_thumb(session, shas.values())
    return {url: ids[sha] for url, sha in shas.items() if sha in ids}


def example_ids_in(
    urls: Urls, sessions: Callable[[], Any], thumb_urls: Iterable[str | None]
) -> dict[str, int]:
    """:func:`example_ids` in a read session of its own."""
    wanted = [u for u in thumb_urls if u]
    if not wanted:
        return {}
    with sessions() as session:
        return example_ids(urls, session, wanted)
