"""``/models/{model}/layers/{layer}/neurons/{unit}/featurevis``: a neuron's feature visualizations.

The htmx fragment of the neuron page's "Feature visualization" section (``.json`` twin: its
data). When none is stored and the live model serves this model, a GET or POST starts an
on-demand render on the live runner's model thread (positive and negative image in one batch,
with :func:`app.neurons.featurevis.default_settings` for the runner's device), answers with a
placeholder that polls this URL, and stores the result (blobs + ``feature_visualizations``) when
it is done, so the next poll, and every later page view, shows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from app.db import queries
from app.db.schema import Layer, Model, Neuron
from app.neurons import featurevis as fv
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.lookup import find_layer, find_model, find_neuron

router = APIRouter()
log = logging.getLogger("conceptscope.web")

PARTIAL = "_partials/neuron_featurevis.html"
TITLE = "Feature visualization"
POLL_SECONDS = 2
MAX_JOBS = 8  # on-demand renders queued at once (each occupies the model thread while it runs)
RENDER_TIMEOUT_S = 600.0


@dataclass
class RenderJob:
    """An on-demand render of one neuron (kept in ``app.state.featurevis_jobs``)."""

    neuron_id: int
    settings: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    status: str = "rendering"  # rendering | done | failed
    error: str | None = None
    task: asyncio.Task[None] | None = None

    def as_json(self) -> dict[str, Any]:
        elapsed = round(time.monotonic() - self.started, 1)
        return {"status": self.status, "error": self.error, "elapsed_s": elapsed, "settings": self.settings}


def fragment_url(request: Request, slug: str, layer: str, unit: int, fmt: str | None = None) -> str:
    """This fragment's URL: the neuron's permalink + ``/featurevis`` (``.json`` twin)."""
    return request.app.state.urls.neuron(slug, layer, unit) + "/featurevis" + (f".{fmt}" if fmt else "")


def jobs(request: Request) -> dict[int, RenderJob]:
    state = request.app.state
    if not hasattr(state, "featurevis_jobs"):
        state.featurevis_jobs = {}
    return state.featurevis_jobs


def runner_for(request: Request, model: Model) -> tuple[Any, str | None]:
    """The live runner if it serves ``model`` (else ``None`` and why not)."""
    runner = getattr(request.app.state, "live_runner", None)
    if runner is None:
        return None, "no live model is running in this server"
    if not getattr(runner, "running", False):
        return None, "the live model is not running"
    try:
        loaded = runner.loaded
    except Exception as exc:  # not loaded
        return None, str(exc)
    if loaded.spec.slug != model.slug:
        return None, f"the live model is {loaded.spec.slug!r}, not {model.slug!r}"
    return runner, None


def on_demand_settings(loaded: Any) -> fv.Settings:
    return fv.default_settings(loaded)


def describe(settings: dict[str, Any]) -> str:
    """One line for the page: what is being rendered and how."""
    device = str(settings.get("device", "cpu")).upper()
    start = f", colour start {settings['colour_start']}" if settings.get("colour_start") else ""
    return (f"positive and negative, {settings.get('steps')} steps at {settings.get('size')} px on the "
            f"{device}, {settings.get('precision', 'fp32')}{start}")


def _render_neuron(loaded: Any, layer_name: str, unit: int, settings: fv.Settings) -> fv.Result:
    """Runs on the live model thread."""
    return fv.render(loaded, layer_name, [unit, unit], signs=[1, -1], settings=settings)


def _store(write_sessions: Any, neuron_id: int, result: fv.Result) -> None:
    with write_sessions() as session:
        for i, kind in enumerate(("positive", "negative")):
            fv.store(session, neuron_id, kind, 0, result, i, extra={"on_demand": True})
        session.commit()


async def _run(write_sessions: Any, runner: Any, job: RenderJob, layer: str, unit: int,
               settings: fv.Settings) -> None:
    try:
        result = await runner.submit(_render_neuron, layer, unit, settings, timeout=RENDER_TIMEOUT_S)
        await asyncio.to_thread(_store, write_sessions, job.neuron_id, result)
        job.status = "done"
    except Exception as exc:  # shown on the page; the next request may retry
        log.warning("on-demand feature visualization of neuron %s failed: %s", job.neuron_id, exc)
        job.status, job.error = "failed", str(exc) or type(exc).__name__


def start_job(request: Request, runner: Any, neuron: Neuron, layer: Layer) -> RenderJob | str:
    """Start (or find) the render of ``neuron``; a string says why it cannot start."""
    table = jobs(request)
    job = table.get(neuron.id)
    if job is not None and job.status == "rendering":
        return job
    active = sum(1 for j in table.values() if j.status == "rendering")
    if active >= MAX_JOBS:
        return f"{active} feature visualizations are rendering already; this one starts when you reload"
    settings = on_demand_settings(runner.loaded)
    described = settings.to_json(size=settings.size, device=runner.loaded.device.type,
                                 precision="bf16-autocast" if runner.loaded.device.type == "cuda" else "fp32")
    job = RenderJob(neuron.id, described)
    table[neuron.id] = job
    job.task = asyncio.create_task(
        _run(request.app.state.write_sessions, runner, job, layer.name, neuron.unit, settings)
    )
    return job


def section_images(request: Request, session: Session, neuron: Neuron) -> list[dict[str, Any]]:
    urls = request.app.state.urls
    return [
        {"kind": row.kind, "index": row.index, "objective": row.objective,
         "image": urls.blob(thumb.sha256, thumb.ext), "width": thumb.width, "height": thumb.height,
         "settings": row.settings}
        for row, thumb in queries.feature_visualizations(session, neuron)
    ]


async def featurevis_fragment(
    model: str, layer: str, unit: str, request: Request, session: Session, fmt: str | None
) -> Response:
    model_row = find_model(session, model)
    layer_row = find_layer(session, model_row, layer)
    neuron = find_neuron(session, model_row, layer_row, unit)
    images = section_images(request, session, neuron)
    poll = fragment_url(request, model_row.slug, layer_row.name, neuron.unit)
    if images:
        section: Any = images
        status = {"status": "done"}
    else:
        runner, why = runner_for(request, model_row)
        started = start_job(request, runner, neuron, layer_row) if runner is not None else why
        if isinstance(started, RenderJob):
            status = started.as_json()
            if started.status == "done":  # stored between our read and now: read again
                section = section_images(request, session, neuron) or {"status": "rendering", "poll": poll}
            else:
                section = {**status, "poll": poll, "describe": describe(started.settings)}
        else:
            status = {"status": "unavailable", "error": started}
            section = {**status, "poll": None}
    data = {"neuron": request.app.state.urls.neuron(model_row.slug, layer_row.name, neuron.unit),
            "images": images, **status}
    return respond(
        request, PARTIAL, data, fmt=fmt,
        json_url=fragment_url(request, model_row.slug, layer_row.name, neuron.unit, "json"),
        context={"section": section, "section_title": TITLE, "fragment": True},
    )


@router.get("/models/{model}/layers/{layer}/neurons/{unit}/featurevis")
@router.post("/models/{model}/layers/{layer}/neurons/{unit}/featurevis")
async def featurevis_html(
    model: str, layer: str, unit: str, request: Request, session: ReadSession
) -> Response:
    """The section fragment; starts an on-demand render when nothing is stored."""
    return await featurevis_fragment(model, layer, unit, request, session, None)


@router.get("/models/{model}/layers/{layer}/neurons/{unit}/featurevis.json")
@router.post("/models/{model}/layers/{layer}/neurons/{unit}/featurevis.json")
async def featurevis_json(
    model: str, layer: str, unit: str, request: Request, session: ReadSession
) -> Response:
    """The section's data as JSON (``status``: done | rendering | failed | unavailable)."""
    return await featurevis_fragment(model, layer, unit, request, session, "json")
