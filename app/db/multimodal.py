"""The multimodal-neurons view's evidence: a unit's top dataset examples, split into photos and
text (images of written words), with their thumbnails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.related import layer_sample
from app.db.schema import Blob, Image, Layer, Neuron, TopExample
from app.db.summaries import neuron_summary
from app.db.units import Thumb, thumb
from app.neurons.scale import percentile_of, z_of

TEXT_MODALITIES = ("text", "labelled_object")  # never photo evidence
EXAMPLES_SCANNED = 40


@dataclass(frozen=True)
class EvidenceExample:
    value: float
    caption: str
    thumb: Thumb


@dataclass(frozen=True)
class UnitScale:
    """A unit's own scale: its column of the activation sample and its dataset mean and std."""

    sample: np.ndarray | None
    mean: float | None
    std: float | None

    def place(self, value: float) -> dict[str, float | None]:
        """``value``'s percentile in the sample and its z-score (:mod:`app.neurons.scale`;
        ``None`` where unknown)."""
        pct, z = percentile_of(self.sample, value), z_of(value, self.mean, self.std)
        return {"percentile": None if pct is None else round(pct, 1), "z": None if z is None else round(z, 2)}


def unit_scales(session: Session, layer: Layer, neuron_ids: dict[int, int]) -> dict[int, UnitScale]:
    """``unit -> UnitScale`` for ``neuron_ids`` (unit -> neuron id): sample columns from the
    precomputed summaries, or from the layer's activation sample (read once) for an index
    without them."""
    rows = session.scalars(select(Neuron).where(Neuron.id.in_(list(neuron_ids.values()))))
    neurons = {n.unit: n for n in rows}
    columns: dict[int, np.ndarray | None] = {}
    for unit, neuron in neurons.items():
        summary = neuron_summary(session, neuron)
        columns[unit] = summary.sample if summary else None
    if any(c is None for c in columns.values()):
        sample = layer_sample(session, layer)
        if sample is not None:
            values = sample[1]
            columns = {u: c if c is not None or u >= values.shape[1] else values[:, u].astype(np.float32)
                       for u, c in columns.items()}  # fmt: skip
    return {u: UnitScale(columns.get(u), n.mean, n.std) for u, n in neurons.items()}


def is_text(meta: Any, tags: list[str] | None) -> bool:
    """Whether an image is text evidence: tagged ``… (text)`` or of a text modality."""
    if tags is not None and any(t.endswith(" (text)") for t in tags):
        return True
    return isinstance(meta, dict) and meta.get("modality") in TEXT_MODALITIES


def photo_and_text_examples(
    session: Session,
    neuron_id: int,
    image_tags: dict[int, list[str]] | None,
    n_photos: int,
    n_texts: int,
) -> tuple[list[EvidenceExample], list[EvidenceExample]]:
    """The neuron's best photos and best text-only images among its top examples (by value);
    ``image_tags`` are the concept profile's tags per image id (``None`` without a profile)."""
    rows = session.execute(
        select(TopExample.value, Image.id, Image.caption, Image.key, Image.meta, Blob.sha256, Blob.mime)
        .join(Image, Image.id == TopExample.image_id)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(TopExample.neuron_id == neuron_id)
        .order_by(TopExample.value.desc(), TopExample.rank)
        .limit(EXAMPLES_SCANNED)
    ).all()
    photos, texts = [], []
    for r in rows:
        tags = image_tags.get(r.id) if image_tags is not None else None
        item = EvidenceExample(float(r.value), r.caption or r.key, thumb(r.sha256, r.mime))
        if not is_text(r.meta, tags):
            photos.append(item)
        elif not (isinstance(r.meta, dict) and r.meta.get("modality") == "labelled_object"):
            texts.append(item)  # text evidence: text-only images, never words printed on an object
    return photos[:n_photos], texts[:n_texts]
