"""Neuron page section: the neuron's labels (manual, imported, automatic)."""

from __future__ import annotations

from app.db import queries
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> list[dict[str, object]] | None:
    labels = queries.neuron_labels(ctx.session, ctx.neuron)
    return [
        {"label": lb.label, "source": lb.source, "score": lb.score, "rank": lb.rank} for lb in labels
    ] or None
