"""Neuron page section: the words that excite the neuron most when rendered as images of text.

Every value is shown on the unit's own scale (issue 16): its percentile in the unit's dataset
sample and its z-score (``(value − mean) / std`` over the indexed dataset). When even the top
word sits below the dataset mean, the section says that no rendered word excites the unit.
"""

from __future__ import annotations

from app.db import queries
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
        pct = float((sample < w.value).mean() * 100) if sample is not None and len(sample) else None
        rows.append({
            "word": w.word, "value": w.value, "rank": w.rank, "relative": max(0.0, (w.value - lo) / span),
            "percentile": None if pct is None else round(pct, 1),
            "z": round((w.value - mean) / std, 2) if std > 0 else None,
            "mean": mean,
        })  # fmt: skip
    return rows


def excites(rows: list[dict[str, object]]) -> bool:
    """Whether the top word reaches the unit's dataset mean (z ≥ 0)."""
    z = rows[0].get("z") if rows else None
    return z is None or float(z) >= 0  # type: ignore[arg-type]
