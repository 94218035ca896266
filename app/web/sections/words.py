"""Neuron page section: the words that excite the neuron most when rendered as images of text."""

from __future__ import annotations

from app.db import queries
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> list[dict[str, object]] | None:
    words = queries.neuron_words(ctx.session, ctx.neuron)
    top = max((w.value for w in words), default=0.0)
    return [
        {"word": w.word, "value": w.value, "rank": w.rank, "relative": (w.value / top) if top > 0 else 0.0}
        for w in words
    ] or None
