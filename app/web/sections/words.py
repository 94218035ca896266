"""Neuron page section: the words that excite the neuron most when rendered as images of text.

Every value is shown on the unit's own scale (issue 16, :mod:`app.neurons.scale`): its percentile
in the unit's dataset sample and its z-score (``(value − mean) / std`` over the indexed dataset).
When even the top word sits below the dataset mean, the section says that no rendered word
excites the unit.
"""

from __future__ import annotations

from app.db import queries
from app.neurons.scale import percentile_of, z_of
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> list[dict[str, object]] | None:
    words = queries.neuron_words(ctx.session, ctx.neuron)
    if not words:
        return None
    sample = ctx.sample
    mean, std = float(ctx.neuron.mean or 0.0), float(ctx.neuron.std or 0.0)
    values = [w.value for w in words]
    # bar length: share of the largest positive value, or of the range when all are <= 0
    top, low = max(values), min(values)
    if top > 0:
        lo, span = 0.0, top
    else:
        lo, span = low, (top - low) or 1.0
    rows = []
    for w in words:
        pct, z = percentile_of(sample, w.value), z_of(w.value, mean, std)
        rows.append({
            "word": w.word, "value": w.value, "rank": w.rank, "relative": max(0.0, (w.value - lo) / span),
            "percentile": None if pct is None else round(pct, 1),
            "z": None if z is None else round(z, 2),
            "mean": mean,
            "below_mean": std > 0 and w.value < mean,
        })  # fmt: skip
    return rows
