"""Stored feature visualizations: the one write path for a ``feature_visualizations`` row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.db import put_blob
from app.db.schema import FeatureVisualization
from app.neurons.featurevis import Result, to_png


def save_visualization(session: Any, neuron_id: int, kind: str, index: int, result: Result, i: int,
                       extra: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Save image ``i`` of ``result`` as a PNG blob + ``feature_visualizations`` row (upsert)."""
    png = to_png(result.images[i])
    size = int(result.images.shape[-1])
    digest = put_blob(session, png, "image/png", size, size)
    row = session.scalar(select(FeatureVisualization).where(
        FeatureVisualization.neuron_id == neuron_id, FeatureVisualization.kind == kind,
        FeatureVisualization.index == index,
    ))  # fmt: skip
    if row is None:
        row = FeatureVisualization(neuron_id=neuron_id, kind=kind, index=index)
        session.add(row)
    row.blob_sha256 = digest
    row.objective = float(result.objectives[i])
    row.settings = {**result.settings, "kind": kind, "seconds": round(result.seconds, 3), **(extra or {})}
