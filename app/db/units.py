"""Unit summaries: what every link to a neuron shows (best label, top thumbnail, stats).

One function, :func:`unit_summaries`, answers it for any set of units of a layer; the layer
grid, the meaning pages, the live analysis and search pages all call it. The label order is the
same everywhere (:func:`source_rank`): manual, then imported, then automatic, by rank, then score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import MIME_EXT
from app.db.schema import Blob, Image, Label, Layer, Neuron, TopExample

#: Label sources ranked ahead of everything else (lower is better).
SOURCE_PRIORITY = {"manual": 0}


@dataclass(frozen=True)
class Thumb:
    """A blob reference: enough to build its URL and an ``<img>`` tag."""

    sha256: str
    ext: str
    width: int | None = None
    height: int | None = None


def thumb(sha: str, mime: str, width: int | None = None, height: int | None = None) -> Thumb:
    """A :class:`Thumb` for a blob of type ``mime``."""
    return Thumb(sha, MIME_EXT.get(mime, "bin"), width, height)


def source_rank(source: str) -> int:
    """Order of label sources: manual (0), imported (1), automatic (2)."""
    if source in SOURCE_PRIORITY:
        return SOURCE_PRIORITY[source]
    return 1 if source.startswith("imported") else 2


@dataclass
class UnitSummary:
    """What a link to a neuron shows: its best label and top image."""

    unit: int
    label: str | None = None
    label_source: str | None = None
    label_score: float | None = None
    multimodality: float | None = None
    max: float | None = None
    thumb: Thumb | None = None
    labels: list[str] = field(default_factory=list)


def unit_summaries(
    session: Session, layer: Layer | int, units: Iterable[int] | None = None
) -> dict[int, UnitSummary]:
    """``unit -> UnitSummary`` for ``units`` of ``layer`` (a row or its id; all indexed units
    when ``units`` is ``None``). Three queries."""
    layer_id = layer if isinstance(layer, int) else layer.id
    wanted = None if units is None else sorted({int(u) for u in units})
    if wanted is not None and not wanted:
        return {}
    q = select(Neuron.id, Neuron.unit, Neuron.multimodality, Neuron.max).where(Neuron.layer_id == layer_id)
    if wanted is not None:
        q = q.where(Neuron.unit.in_(wanted))
    out: dict[int, UnitSummary] = {}
    ids: dict[int, int] = {}
    for nid, unit, mmod, mx in session.execute(q):
        out[unit] = UnitSummary(unit, multimodality=mmod, max=mx)
        ids[nid] = unit
    if not ids:
        return out
    best: dict[int, tuple[Any, ...]] = {}
    from app.db.evidence import evidence_for, title_key  # issue 16: only backed labels are titles

    evidence = evidence_for(session, ids)
    for nid, text, source, score, rank in session.execute(
        select(Label.neuron_id, Label.label, Label.source, Label.score, Label.rank).where(
            Label.neuron_id.in_(list(ids))
        )
    ):
        unit = ids[nid]
        ev = evidence.get((nid, text.lower()))
        auc, precision, n_pos = (ev.auc, ev.precision, ev.n_positive) if ev else (None, None, None)
        key = title_key(source_rank(source), rank, score, auc, precision, n_pos)
        out[unit].labels.append(text)
        if unit not in best or key < best[unit][0]:
            best[unit] = (key, text, source, score)
    for unit, (key, text, source, score) in best.items():
        if key[0] == 0:  # a weak or unevidenced label is listed, never the title
            s = out[unit]
            s.label, s.label_source, s.label_score = text, source, score
    for nid, sha, mime, w, h in session.execute(
        select(TopExample.neuron_id, Blob.sha256, Blob.mime, Blob.width, Blob.height)
        .join(Image, Image.id == TopExample.image_id)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(TopExample.neuron_id.in_(list(ids)), TopExample.rank == 0)
    ):
        out[ids[nid]].thumb = thumb(sha, mime, w, h)
    return out
