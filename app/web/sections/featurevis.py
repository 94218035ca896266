"""Neuron page section: feature visualizations (images optimised to excite the neuron).

Stored visualizations: a list of images. None stored but the live model serves this model: a
placeholder ``{"status": "pending", "poll": URL}`` whose partial asks
:mod:`app.web.views.featurevis` (htmx) to render them on demand. Otherwise: no section.
"""

from __future__ import annotations

from typing import Any

from app.db import queries
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> list[dict[str, object]] | dict[str, Any] | None:
    stored = [
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
    ]
    if stored:
        return stored
    if _serves(ctx.live_runner, ctx.model.slug):
        poll = ctx.urls.neuron(ctx.model.slug, ctx.layer.name, ctx.neuron.unit) + "/featurevis"
        return {"status": "pending", "poll": poll}
    return None


def _serves(runner: Any, slug: str) -> bool:
    """Whether ``runner`` is running and holds the model called ``slug``."""
    if runner is None or not getattr(runner, "running", False):
        return False
    try:
        return runner.loaded.spec.slug == slug
    except Exception:
        return False
