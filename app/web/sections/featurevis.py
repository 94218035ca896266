"""Neuron page section: feature visualizations (images optimised to excite the neuron).

Stored visualizations: a list of images. None stored: the state of an on-demand render
(``{"status": "rendering" | "failed" | "cancelled", "poll": URL, ...}``) or, when the live model
serves this model, ``{"status": "available", "poll": URL}``, whose partial shows a button that
POSTs to :mod:`app.web.views.featurevis` (loading the page never starts a render). Otherwise: no
section. :func:`section_data` is also the on-demand fragment's loader (that view shows the
``unavailable`` state too).
"""

from __future__ import annotations

from typing import Any

from app.db import featurevis_jobs as jobs_db
from app.db import queries
from app.db.schema import Neuron
from app.live import jobs
from app.live.context import runner_serves
from app.web.sections import NeuronContext
from app.web.urls import Urls

RENDER_STATES = ("rendering", "failed", "cancelled")
UNREAD: Any = object()
"""``job`` of :func:`section_data` when the caller has not read it (read it from the session)."""


def poll_url(urls: Urls, slug: str, layer: str, unit: int) -> str:
    """The on-demand fragment's URL: the neuron's permalink + ``/featurevis``."""
    return urls.neuron(slug, layer, unit) + "/featurevis"


def stored_images(session: Any, urls: Urls, neuron: Neuron) -> list[dict[str, Any]]:
    """The neuron's stored feature visualizations, as the section shows them."""
    return [
        {
            "kind": fv.kind,
            "index": fv.index,
            "objective": fv.objective,
            "image": urls.blob(thumb.sha256, thumb.ext),
            "width": thumb.width,
            "height": thumb.height,
            "settings": fv.settings,
        }
        for fv, thumb in queries.feature_visualizations(session, neuron)
    ]


def section_data(
    session: Any, urls: Urls, slug: str, layer: str, neuron: Neuron, runner: Any, job: Any = UNREAD
) -> list[dict[str, Any]] | dict[str, Any]:
    """The stored images; else the state of a render (``job``: the neuron's job when the caller
    has just read it, else it is read here), the start button, or why there is none
    (``status: unavailable``)."""
    images = stored_images(session, urls, neuron)
    if images:
        return images
    if job is UNREAD:
        job = jobs_db.job_of(session, neuron.id)
    serves, why = runner_serves(runner, slug)
    poll = poll_url(urls, slug, layer, neuron.unit)
    if job is not None and job.status in RENDER_STATES:
        return {"status": job.status, "error": job.error, "elapsed_s": job.elapsed_s,
                "settings": job.settings, "poll": poll, "describe": jobs.describe(job.settings),
                "can_start": serves}  # fmt: skip
    if serves:
        return {"status": "available", "error": None, "poll": poll, "can_start": True}
    return {"status": "unavailable", "error": why, "poll": None, "can_start": False}


def load(ctx: NeuronContext) -> list[dict[str, Any]] | dict[str, Any] | None:
    section = section_data(ctx.session, ctx.urls, ctx.model.slug, ctx.layer.name, ctx.neuron, ctx.live_runner)
    return None if isinstance(section, dict) and section["status"] == "unavailable" else section
