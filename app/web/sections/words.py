"""Neuron page section: the words that excite the neuron most when rendered as images of text."""

from __future__ import annotations

from app.db import queries
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> list[dict[str, object]] | None:
    words = queries.neuron_words(ctx.session, ctx.neuron)
    if not words:
        return None
    values = [w.value for w in words]
    # bar length: share of the largest positive value, or of the range when all are <= 0
    top, low = max(values), min(values)
    if top > 0:
        lo, span = 0.0, top
    else:
        lo, span = low, (top - low) or 1.0
    return [
        {"word": w.word, "value": w.value, "rank": w.rank, "relative": max(0.0, (w.value - lo) / span)}
        for w in words
    ]
