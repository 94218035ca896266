"""Neuron page section: the neuron's labels (manual, imported, automatic), each with its evidence.

Evidence (issue 16, table ``label_evidence``): on held-out images, AUC of the neuron's activation
for images of the label's concept against the rest, one-sided Mann–Whitney p, precision of the
top-20 held-out images, n, and a two-histogram plot. Labels below AUC 0.75 or top-20 precision
0.5 (:func:`app.neurons.labels.is_backed`), or without evidence, are marked weak and are never the
neuron's title.
"""

from __future__ import annotations

from app.db import queries
from app.db.evidence import evidence_for, title_key
from app.db.units import source_rank
from app.web.sections import NeuronContext

HIST_W, HIST_H = 120, 36


def _bars(histogram: dict[str, list[float]]) -> dict[str, object] | None:
    pos, neg = histogram.get("positive") or [], histogram.get("negative") or []
    if not pos or len(pos) != len(neg):
        return None
    top = max(max(pos), max(neg)) or 1.0
    w = HIST_W / len(pos)

    def bars(values: list[float]) -> list[dict[str, float]]:
        return [
            {"x": round(i * w, 1), "w": round(w - 1, 1), "h": round(h, 1), "y": round(HIST_H - h, 1)}
            for i, h in enumerate(v / top * HIST_H for v in values)
        ]

    edges = histogram.get("edges") or []
    return {"width": HIST_W, "height": HIST_H, "positive": bars(pos), "negative": bars(neg),
            "lo": edges[0] if edges else None, "hi": edges[-1] if edges else None}  # fmt: skip


def load(ctx: NeuronContext) -> list[dict[str, object]] | None:
    labels = queries.neuron_labels(ctx.session, ctx.neuron)
    evidence = evidence_for(ctx.session, [ctx.neuron.id])
    out = []
    for lb in labels:
        ev = evidence.get((ctx.neuron.id, lb.label.lower()))
        item: dict[str, object] = {"label": lb.label, "source": lb.source, "score": lb.score, "rank": lb.rank}
        item["evidence"] = ev.as_dict() if ev else None
        item["weak"] = not (ev and ev.backed)
        item["histogram"] = _bars(ev.histogram) if ev else None
        item["pseudo"] = bool(ev and ev.tag_source == "zero-shot")
        figures = (ev.auc, ev.precision, ev.n_positive) if ev else (None, None, None)
        item["_key"] = title_key(source_rank(lb.source), lb.rank, lb.score, *figures)
        out.append(item)
    out.sort(key=lambda it: it["_key"])  # type: ignore[arg-type,return-value]
    for i, item in enumerate(out):
        item["title"] = i == 0 and not item["weak"]
        del item["_key"]
    return out or None
