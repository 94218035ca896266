"""Read queries of the typographic attack lab (issue 13: the view runs no SQL)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.schema import Analysis, Blob, Image, Layer, Model, Neuron
from app.db.search import vocabulary  # noqa: F401 - the lab's default classes, re-exported
from app.db.units import UnitSummary, unit_summaries


@dataclass
class Source:
    """A picked image's bytes and what it is (``kind``, ``id``, ``caption``)."""

    data: bytes
    about: dict[str, Any]


def dataset_image(session: Session, image_id: int) -> Source | None:
    """A dataset image's thumbnail bytes and description (``None``: no such image)."""
    row = session.execute(
        select(Image.id, Image.caption, Image.key, Blob.data)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(Image.id == image_id)
    ).first()
    if row is None:
        return None
    return Source(bytes(row.data), {"kind": "dataset image", "id": row.id, "caption": row.caption or row.key})


def stored_upload(session: Session, analysis_id: str) -> Source | None:
    """A stored upload's image bytes (``None``: unknown or evicted)."""
    row = session.execute(
        select(Analysis.id, Blob.data)
        .join(Blob, Blob.sha256 == Analysis.image_sha256)
        .where(Analysis.id == analysis_id)
    ).first()
    if row is None:
        return None
    return Source(bytes(row.data), {"kind": "upload", "id": row.id, "caption": "uploaded image"})


def unit_stds(session: Session, slug: str) -> dict[str, np.ndarray]:
    """``layer -> (units,)`` each unit's std over the indexed dataset (NaN where unknown)."""
    rows = session.execute(
        select(Layer.name, Layer.n_units, Neuron.unit, Neuron.std)
        .join(Neuron, Neuron.layer_id == Layer.id)
        .join(Model, Model.id == Layer.model_id)
        .where(Model.slug == slug)
    ).all()
    out: dict[str, np.ndarray] = {}
    for name, n_units, unit, std in rows:
        arr = out.setdefault(name, np.full(n_units, np.nan))
        if unit < n_units:
            arr[unit] = std
    return out


def layer_unit_summaries(
    session: Session, slug: str, wanted: dict[str, Iterable[int]]
) -> tuple[dict[str, int], dict[str, dict[int, UnitSummary]]]:
    """``(layer -> position, layer -> unit -> UnitSummary)`` for the ``wanted`` units of model
    ``slug``'s layers (layers the index does not have are left out)."""
    model = session.scalar(select(Model).where(Model.slug == slug))
    layers = (
        {lr.name: lr for lr in session.scalars(select(Layer).where(Layer.model_id == model.id))}
        if model
        else {}
    )
    positions = {name: layer.position for name, layer in layers.items()}
    summaries = {
        name: unit_summaries(session, layers[name], units) for name, units in wanted.items() if name in layers
    }
    return positions, summaries
