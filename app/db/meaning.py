"""Read queries for the meaning features (labels, related neurons, recipes, atlas, multimodal view).

Views and section loaders call these; they return plain dataclasses with blob references.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import from_bytes, queries
from app.db.schema import Blob, ConceptProfile, Image, Label, Layer, Model, Neuron, NeuronWord, TopExample


@dataclass
class UnitSummary:
    """What a link to a neuron shows: its best label and top image."""

    unit: int
    label: str | None = None
    label_source: str | None = None
    label_score: float | None = None
    multimodality: float | None = None
    max: float | None = None
    thumb: queries.Thumb | None = None
    labels: list[str] = field(default_factory=list)


def unit_summaries(
    session: Session, layer: Layer, units: Iterable[int] | None = None
) -> dict[int, UnitSummary]:
    """``unit -> UnitSummary`` for ``units`` of ``layer`` (all indexed units when ``None``)."""
    wanted = None if units is None else sorted({int(u) for u in units})
    if wanted is not None and not wanted:
        return {}
    q = select(Neuron.id, Neuron.unit, Neuron.multimodality, Neuron.max).where(Neuron.layer_id == layer.id)
    if wanted is not None:
        q = q.where(Neuron.unit.in_(wanted))
    out: dict[int, UnitSummary] = {}
    ids: dict[int, int] = {}
    for nid, unit, mmod, mx in session.execute(q):
        out[unit] = UnitSummary(unit, multimodality=mmod, max=mx)
        ids[nid] = unit
    if not ids:
        return out
    best: dict[int, tuple[object, ...]] = {}
    for nid, text, source, score, rank in session.execute(
        select(Label.neuron_id, Label.label, Label.source, Label.score, Label.rank).where(
            Label.neuron_id.in_(list(ids))
        )
    ):
        unit = ids[nid]
        key = (queries._source_rank(source), rank, -(score or 0.0))  # noqa: SLF001 - same order as pages
        out[unit].labels.append(text)
        if unit not in best or key < best[unit][0]:  # type: ignore[operator]
            best[unit] = (key, text, source, score)
    for unit, (_key, text, source, score) in best.items():
        s = out[unit]
        s.label, s.label_source, s.label_score = text, source, score  # type: ignore[assignment]
    for nid, sha, mime, w, h in session.execute(
        select(TopExample.neuron_id, Blob.sha256, Blob.mime, Blob.width, Blob.height)
        .join(Image, Image.id == TopExample.image_id)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(TopExample.neuron_id.in_(list(ids)), TopExample.rank == 0)
    ):
        out[ids[nid]].thumb = queries._thumb(sha, mime, w, h)  # noqa: SLF001
    return out


def top_thumbs(
    session: Session, layer: Layer, unit: int, limit: int = 6
) -> list[tuple[queries.Thumb, float]]:
    """The neuron's ``limit`` best dataset examples: (thumbnail, value)."""
    rows = session.execute(
        select(Blob.sha256, Blob.mime, Blob.width, Blob.height, TopExample.value)
        .join(Neuron, Neuron.id == TopExample.neuron_id)
        .join(Image, Image.id == TopExample.image_id)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(Neuron.layer_id == layer.id, Neuron.unit == unit)
        .order_by(TopExample.value.desc(), TopExample.rank)
        .limit(limit)
    )
    return [(queries._thumb(sha, mime, w, h), float(v)) for sha, mime, w, h, v in rows]  # noqa: SLF001


def top_words(session: Session, layer: Layer, unit: int, limit: int = 6) -> list[tuple[str, float]]:
    """The neuron's best rendered words (from ``precompute words``), if stored."""
    rows = session.execute(
        select(NeuronWord.word, NeuronWord.value)
        .join(Neuron, Neuron.id == NeuronWord.neuron_id)
        .where(Neuron.layer_id == layer.id, Neuron.unit == unit)
        .order_by(NeuronWord.rank)
        .limit(limit)
    )
    return [(w, float(v)) for w, v in rows]


@dataclass
class Profile:
    """A layer's concept profile (see :class:`app.db.schema.ConceptProfile`), arrays decoded."""

    source: str
    concepts: list[str]
    image_counts: list[int]
    image_means: np.ndarray  # (concepts, units), NaN where too few pictures
    word_values: np.ndarray  # (concepts, units)
    word_thumbs: list[queries.Thumb | None]
    image_tags: dict[int, list[str]]


def concept_profile(session: Session, layer: Layer) -> Profile | None:
    row = session.get(ConceptProfile, layer.id)
    if row is None:
        return None
    shape = (len(row.concepts), layer.n_units)
    blobs = {
        sha: queries._thumb(sha, mime, w, h)  # noqa: SLF001
        for sha, mime, w, h in session.execute(
            select(Blob.sha256, Blob.mime, Blob.width, Blob.height).where(
                Blob.sha256.in_(row.word_blobs or [])
            )
        )
    }
    return Profile(
        source=row.source,
        concepts=list(row.concepts),
        image_counts=[int(c) for c in row.image_counts],
        image_means=from_bytes(row.image_means, "float32", shape),
        word_values=from_bytes(row.word_values, "float32", shape),
        word_thumbs=[blobs.get(sha) for sha in (row.word_blobs or [])],
        image_tags={int(k): list(v) for k, v in (row.image_tags or {}).items()},
    )


def model_layers(session: Session, model: Model) -> list[Layer]:
    return queries.list_layers(session, model)


def last_layer(session: Session, model: Model) -> Layer | None:
    """The model's last-block layer (the one with embedding directions)."""
    return session.scalar(select(Layer).where(Layer.model_id == model.id, Layer.is_last.is_(True)))


def concepts_of(session: Session, model: Model) -> list[str]:
    """The label vocabulary used for ``model``'s concept profiles (empty if none stored)."""
    row = session.scalar(
        select(ConceptProfile.concepts)
        .join(Layer, Layer.id == ConceptProfile.layer_id)
        .where(Layer.model_id == model.id)
        .limit(1)
    )
    return list(row or [])
