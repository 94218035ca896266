"""Neuron page section: feature visualizations (images optimised to excite the neuron).

Stored visualizations: a list of images. None stored: the state of an on-demand render
(``{"status": "rendering" | "failed" | "cancelled", "poll": URL, ...}``) or, when the live model
serves this model, ``{"status": "available", "poll": URL}``, whose partial shows a button that
POSTs to :mod:`app.web.views.featurevis` (loading the page never starts a render). Otherwise: no
section.
"""

from __future__ import annotations

from typing import Any

from app.db import featurevis_jobs as jobs_db
from app.db import queries
from app.live import jobs
from app.live.context import runner_serves
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
    poll = ctx.urls.neuron(ctx.model.slug, ctx.layer.name, ctx.neuron.unit) + "/featurevis"
    serves, _why = runner_serves(ctx.live_runner, ctx.model.slug)
    job = jobs_db.job_of(ctx.session, ctx.neuron.id)
    if job is not None and job.status in ("rendering", "failed", "cancelled"):
        return {"status": job.status, "error": job.error, "elapsed_s": job.elapsed_s, "poll": poll,
                "describe": jobs.describe(job.settings), "can_start": serves}  # fmt: skip
    if serves:
        return {"status": "available", "poll": poll, "can_start": True}
    return None
