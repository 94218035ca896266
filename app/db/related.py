"""Related neurons read from the index: a layer's directions or activation sample, and the units
of the same layer most similar to a given one (the maths is :mod:`app.neurons.related`).

* Last block: cosine similarity of the units' directions in embedding space (table
  ``directions``).
* Other layers: Pearson correlation of the units' activations over the stored random sample
  (table ``activation_samples``).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from app.db import from_bytes
from app.db.schema import ActivationSample, Direction, Layer
from app.neurons.related import RelatedUnit, most_correlated, most_similar_directions


def layer_directions(session: Session, layer: Layer) -> np.ndarray | None:
    """``(units, embed_dim)`` float32 directions of a last-block layer, or ``None``."""
    row = session.get(Direction, layer.id)
    if row is None:
        return None
    return from_bytes(row.values, "float32", (row.n_units, row.embed_dim))


def layer_sample(session: Session, layer: Layer) -> tuple[list[int], np.ndarray] | None:
    """(image ids, ``(images, units)`` values) of the layer's activation sample, or ``None``."""
    row = session.get(ActivationSample, layer.id)
    if row is None or not row.values:
        return None
    return [int(i) for i in row.image_ids], from_bytes(row.values, "float16", (row.n_images, row.n_units))


def related_units(session: Session, layer: Layer, unit: int, k: int = 8) -> list[RelatedUnit]:
    """Related units of ``unit``: by direction for a last block, else by activation correlation."""
    if layer.is_last:
        directions = layer_directions(session, layer)
        if directions is not None and unit < directions.shape[0]:
            return most_similar_directions(directions, unit, k)
    sample = layer_sample(session, layer)
    if sample is None or unit >= sample[1].shape[1] or sample[1].shape[0] < 3:
        return []
    return most_correlated(sample[1], unit, k)
