"""Read queries for the meaning features (labels, related neurons, recipes, atlas, multimodal view).

Views and section loaders call these; they return plain dataclasses with blob references.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import from_bytes, queries, units
from app.db.multimodal import unit_scales
from app.db.schema import Blob, ConceptProfile, Layer, Model, Neuron, NeuronWord
from app.db.units import UnitSummary, unit_summaries  # noqa: F401 - the one unit-summary function, re-exported
from app.neurons.scale import percentile_of


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
        sha: units.thumb(sha, mime, w, h)
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


def concepts_of(session: Session, model: Model) -> list[str]:
    """The label vocabulary used for ``model``'s concept profiles (empty if none stored)."""
    row = session.scalar(
        select(ConceptProfile.concepts)
        .join(Layer, Layer.id == ConceptProfile.layer_id)
        .where(Layer.model_id == model.id)
        .limit(1)
    )
    return list(row or [])


@dataclass
class MultimodalUnit:
    """A unit's multimodality (table ``unit_multimodality``), see :mod:`app.neurons.multimodality`."""

    neuron_id: int
    unit: int
    score: float
    concept: str | None
    picture_d: float | None
    word_d: float | None
    correlation: float | None
    champion: bool = False  # the most multimodal unit of its concept
    strength: float | None = None  # champions: min percentile of its concept's word and pictures


def multimodal_strength(
    profile: Profile | None, concept: str | None, unit: int, sample: np.ndarray | None
) -> float | None:
    """How strongly a unit's concept drives it on its own scale: the smaller of the percentiles, in
    the unit's activation sample, of its mean response to the concept's word (the profile's
    renderings) and to the concept's pictures (``None`` where either is unknown)."""
    if profile is None or concept not in profile.concepts or sample is None:
        return None
    i = profile.concepts.index(concept)
    word, pictures = float(profile.word_values[i, unit]), float(profile.image_means[i, unit])
    if not (np.isfinite(word) and np.isfinite(pictures)):
        return None
    word_pct, pictures_pct = percentile_of(sample, word), percentile_of(sample, pictures)
    return None if word_pct is None or pictures_pct is None else min(word_pct, pictures_pct)


def multimodal_ranking(session: Session, layer: Layer) -> list[MultimodalUnit]:
    """The layer's scored units: first the most multimodal unit of each concept (highest score),
    strongest first (:func:`multimodal_strength`: a unit that prefers its concept to the others
    but is hardly excited by it comes late), then every other unit by score. One concept cannot
    fill the top of the list with near copies of the same unit."""
    from app.db.schema import UnitMultimodality

    rows = [
        MultimodalUnit(nid, unit, float(m.score), m.concept, m.picture_d, m.word_d, m.correlation)
        for nid, unit, m in session.execute(
            select(Neuron.id, Neuron.unit, UnitMultimodality)
            .join(UnitMultimodality, UnitMultimodality.neuron_id == Neuron.id)
            .where(Neuron.layer_id == layer.id, UnitMultimodality.score.is_not(None))
        )
    ]
    rows.sort(key=lambda r: (-r.score, r.unit))
    seen: set[str | None] = set()
    for r in rows:
        if r.concept not in seen:
            seen.add(r.concept)
            r.champion = True
    champions = [r for r in rows if r.champion]
    profile = concept_profile(session, layer)
    scales = unit_scales(session, layer, {r.unit: r.neuron_id for r in champions}) if profile else {}
    for r in champions:
        scale = scales.get(r.unit)
        r.strength = multimodal_strength(profile, r.concept, r.unit, scale.sample if scale else None)
    champions.sort(key=lambda r: (r.strength is None, -(r.strength or 0.0), -r.score, r.unit))
    return champions + [r for r in rows if not r.champion]
