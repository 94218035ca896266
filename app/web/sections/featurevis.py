"""Neuron page section: feature visualizations (images optimised to excite the neuron)."""

from __future__ import annotations

from app.db import queries
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> list[dict[str, object]] | None:
    return [
        {
            "kind": fv.kind,
            "index": fv.index,
            "objective": fv.objective,
            "image": ctx.urls.blob(thumb.sha256, thumb.ext),
            "width": thumb.width,
            "height": thumb.height,
            "settings": fv.settings,
        }
        for fv, thumb in queries.feature_visualizations(ctx.session, ctx.neuron)
    ] or None
