"""Read queries of the search page and the typographic lab's neighbours (issue 13: views run no SQL).

* :func:`layer_directions`: each last-block layer's unit directions and unit stds;
* :func:`search_evidence`: what the evidence ranking of zero-shot search reads from the index
  (activation sample, concept vocabulary and the units' mean responses to its rendered words);
* :func:`thumbnails`: sample images as PIL images (their embeddings are computed live);
* :func:`suggestions`, :func:`first_model_slug`: the empty search page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import from_bytes
from app.db.schema import (
    ActivationSample,
    Blob,
    ConceptProfile,
    Direction,
    Image,
    Label,
    Layer,
    Model,
    Neuron,
)
from app.db.units import UnitSummary, unit_summaries

if TYPE_CHECKING:
    from PIL import Image as PILImage


@dataclass
class LayerDirections:
    """A last-block layer's unit directions and each unit's activation spread over the dataset."""

    directions: np.ndarray  # (units, embed_dim) float32
    scale: np.ndarray  # (units,) the std of each unit's value over the indexed dataset (1 if unknown)


def layer_directions(session: Session, model_id: int) -> dict[str, LayerDirections]:
    """The stored unit directions of the model's last-block layers and the units' stds."""
    found = {}
    rows = session.execute(
        select(Layer.id, Layer.name, Direction)
        .join(Direction, Direction.layer_id == Layer.id)
        .where(Layer.model_id == model_id)
        .order_by(Layer.position)
    ).all()
    for layer_id, name, d in rows:
        matrix = from_bytes(d.values, "float32", (d.n_units, d.embed_dim))
        scale = np.ones(d.n_units, dtype=np.float32)
        for unit, std in session.execute(select(Neuron.unit, Neuron.std).where(Neuron.layer_id == layer_id)):
            if 0 <= unit < d.n_units and std is not None and np.isfinite(std):
                scale[unit] = std
        found[name] = LayerDirections(matrix, scale)
    return found


@dataclass
class LayerEvidence:
    """What the index knows about one layer's units beyond their directions (issue 16).

    ``values``: the activation sample ``(images, units)``; ``concepts``: the label vocabulary of
    the concept profile; ``word_values``: ``(concepts, units)`` each unit's mean response to the
    vocabulary's words rendered as text (by the labels stage's word renderer)."""

    image_ids: list[int]
    values: np.ndarray
    concepts: list[str]
    word_values: np.ndarray


def search_evidence(session: Session, model_id: int) -> dict[str, LayerEvidence]:
    """``layer name -> LayerEvidence`` for the model's layers with directions, an activation
    sample and a concept profile (empty when the labels stage has not run)."""
    out = {}
    rows = session.execute(
        select(Layer, ActivationSample, ConceptProfile)
        .join(Direction, Direction.layer_id == Layer.id)
        .join(ActivationSample, ActivationSample.layer_id == Layer.id)
        .join(ConceptProfile, ConceptProfile.layer_id == Layer.id)
        .where(Layer.model_id == model_id)
    ).all()
    for layer, sample, profile in rows:
        values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units)).astype(np.float32)
        words = from_bytes(profile.word_values, "float32", (len(profile.concepts), layer.n_units))
        out[layer.name] = LayerEvidence(
            [int(i) for i in sample.image_ids], values, [str(c) for c in profile.concepts], words
        )
    return out


def thumbnails(session: Session, image_ids: list[int]) -> dict[int, PILImage.Image]:
    """RGB thumbnails of ``image_ids`` (unreadable ones are left out)."""
    from PIL import Image as PILImage

    out = {}
    for start in range(0, len(image_ids), 500):
        rows = session.execute(
            select(Image.id, Blob.data)
            .join(Blob, Blob.sha256 == Image.thumb_sha256)
            .where(Image.id.in_(image_ids[start : start + 500]))
        )
        for image_id, data in rows:
            try:
                img = PILImage.open(io.BytesIO(data))
                img.load()
                out[int(image_id)] = img.convert("RGB")
            except Exception:  # noqa: BLE001 - a corrupt blob is left out
                continue
    return out


def suggestions(session: Session, layer_ids: list[int], limit: int = 12) -> list[str]:
    """The best-scored label texts of ``layer_ids``' neurons (example queries)."""
    rows = session.execute(
        select(Label.label, func.max(Label.score))
        .join(Neuron, Neuron.id == Label.neuron_id)
        .where(Neuron.layer_id.in_(layer_ids))
        .group_by(Label.label)
        .order_by(func.max(Label.score).desc())
        .limit(limit)
    ).all()
    return [r[0] for r in rows if r[0] and len(r[0]) <= 40]


def vocabulary(session: Session, slug: str) -> list[str]:
    """The label vocabulary of model ``slug``'s concept profiles (empty if none)."""
    from app.db.meaning import concepts_of

    model = session.scalar(select(Model).where(Model.slug == slug))
    return concepts_of(session, model) if model else []


def layer_summaries(session: Session, slug: str, layer_name: str, units: list[int]) -> dict[int, UnitSummary]:
    """``unit -> UnitSummary`` (label, thumbnail) of ``units`` of model ``slug``'s layer ``layer_name``."""
    layer = session.scalar(
        select(Layer)
        .join(Model, Model.id == Layer.model_id)
        .where(Model.slug == slug, Layer.name == layer_name)
    )
    return unit_summaries(session, layer, units) if layer else {}


def first_model_slug(session: Session) -> str | None:
    """The slug of the index's first model."""
    return session.scalar(select(Model.slug).order_by(Model.id).limit(1))
