"""Reads of the per-neuron page summaries written by ``precompute summaries`` (issue 15).

A neuron page reads one ``neuron_summaries`` row (its activation-sample column and its related
units) instead of the layer's whole activation sample and a correlation over it, so its cost does
not grow with the number of units or images. An index built before summaries existed still
serves: :func:`neuron_summary` answers ``None`` and the page says how to compute them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from app.db.schema import ActivationSample, Layer, Neuron, NeuronSummary


@dataclass(frozen=True)
class Summary:
    """What a neuron page needs, precomputed."""

    sample: np.ndarray | None  # float32 column of the layer's activation sample
    related_method: str | None  # "direction" | "correlation" | None
    related: list[tuple[int, float]]  # (unit, similarity), best first


def _has_table(session: Session) -> bool:
    bind = session.get_bind()
    cache = bind.__dict__.setdefault("_conceptscope_has_summaries", {})
    if "ok" not in cache or not cache["ok"]:
        cache["ok"] = inspect(bind).has_table(NeuronSummary.__tablename__)
    return bool(cache["ok"])


def neuron_summary(session: Session, neuron: Neuron) -> Summary | None:
    """The precomputed summary of ``neuron``, or ``None`` (not computed for this index)."""
    if not _has_table(session):
        return None
    row = session.execute(
        select(NeuronSummary.data, NeuronSummary.sample).where(NeuronSummary.neuron_id == neuron.id)
    ).first()
    if row is None:
        return None
    data, raw = row
    sample = (
        np.frombuffer(raw, dtype=np.dtype("float16").newbyteorder("<")).astype(np.float32) if raw else None
    )
    related = (data or {}).get("related") or {}
    return Summary(
        sample,
        related.get("method"),
        [(int(u), float(s)) for u, s in related.get("units", [])],
    )


def sample_image_ids(session: Session, layer: Layer) -> list[int] | None:
    """The image ids of ``layer``'s activation sample, in order, without loading its values."""
    ids = session.scalar(select(ActivationSample.image_ids).where(ActivationSample.layer_id == layer.id))
    return [int(i) for i in ids] if ids is not None else None
