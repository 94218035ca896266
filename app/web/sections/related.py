"""Neuron page section: related neurons (by embedding direction or activation correlation)."""

from __future__ import annotations

from app.db.meaning import unit_summaries
from app.db.related import related_units
from app.neurons.related import DIRECTION, RelatedUnit
from app.web.sections import NeuronContext

K = 8


def load(ctx: NeuronContext) -> dict[str, object] | None:
    summary = ctx.summary
    if summary is not None and summary.related_method:
        related = [RelatedUnit(u, s, summary.related_method) for u, s in summary.related[:K]]
    elif summary is not None:
        related = []
    else:  # an index without precomputed summaries: computed here, in memory, nothing written
        related = related_units(ctx.session, ctx.layer, ctx.neuron.unit, K)
    if not related:
        return None
    summaries = unit_summaries(ctx.session, ctx.layer, [r.unit for r in related])
    slug, name = ctx.model.slug, ctx.layer.name
    method = related[0].method
    return {
        "method": method,
        "precomputed": summary is not None,
        "explanation": (
            "cosine similarity of the neurons' directions in the image-text embedding space"
            if method == DIRECTION
            else "correlation of the neurons' activations over the stored image sample"
        ),
        "neurons": [
            {
                "unit": r.unit,
                "layer": name,
                "url": ctx.urls.neuron(slug, name, r.unit),
                "similarity": round(r.similarity, 4),
                "label": summaries[r.unit].label if r.unit in summaries else None,
                "thumb": (
                    ctx.urls.blob(summaries[r.unit].thumb.sha256, summaries[r.unit].thumb.ext)
                    if r.unit in summaries and summaries[r.unit].thumb
                    else None
                ),
            }
            for r in related
        ],
    }
