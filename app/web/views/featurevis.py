"""``/models/{model}/layers/{layer}/neurons/{unit}/featurevis``: a neuron's feature visualizations.

* ``GET`` (+ ``.json``): the htmx fragment of the neuron page's "Feature visualization" section
  (twin: its data) -- the stored images, or the state of an on-demand render, or a button to
  start one. A GET (or HEAD) never starts anything and never writes.
* ``POST`` (+ ``.json``): start an on-demand render on the live runner when nothing is stored
  (positive and negative image in one batch, :func:`app.neurons.featurevis.default_settings`
  for the runner's device). The HTML form is an htmx ``hx-post`` carrying the visitor's CSRF
  token. The job is claimed in the database (:mod:`app.live.jobs`): one render per neuron over
  all workers, at most ``featurevis_max_jobs`` at once and ``featurevis_per_client`` per client
  (429 beyond), cancelled after ``featurevis_timeout_s``; a precomputed image is never replaced.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.config import Settings
from app.db import featurevis_jobs as jobs_db
from app.db import queries
from app.db.schema import Layer, Model, Neuron
from app.live import jobs
from app.live.context import runner_serves
from app.web import csrf
from app.web.analyses import secret
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.lookup import find_layer, find_model, find_neuron
from app.web.routing import page
from app.web.state import app_cache, runner_of

router = APIRouter()

PARTIAL = "_partials/neuron_featurevis.html"
TITLE = "Feature visualization"
PATH = "/models/{model}/layers/{layer}/neurons/{unit}/featurevis"


def fragment_url(request: Request, slug: str, layer: str, unit: int, fmt: str | None = None) -> str:
    """This fragment's URL: the neuron's permalink + ``/featurevis`` (``.json`` twin)."""
    return request.app.state.urls.neuron(slug, layer, unit) + "/featurevis" + (f".{fmt}" if fmt else "")


def section_images(request: Request, session: ReadSession, neuron: Neuron) -> list[dict[str, Any]]:
    urls = request.app.state.urls
    return [
        {
            "kind": row.kind,
            "index": row.index,
            "objective": row.objective,
            "image": urls.blob(thumb.sha256, thumb.ext),
            "width": thumb.width,
            "height": thumb.height,
            "settings": row.settings,
        }
        for row, thumb in queries.feature_visualizations(session, neuron)
    ]


def _lookup(session: ReadSession, model: str, layer: str, unit: str) -> tuple[Model, Layer, Neuron]:
    model_row = find_model(session, model)
    layer_row = find_layer(session, model_row, layer)
    return model_row, layer_row, find_neuron(session, model_row, layer_row, unit)


def _fragment(
    request: Request,
    session: ReadSession,
    found: tuple[Model, Layer, Neuron],
    fmt: str | None,
    *,
    note: str | None = None,
    status_code: int = 200,
) -> Response:
    """The section as it stands (read only): images, a render's state, or the start button."""
    model_row, layer_row, neuron = found
    images = section_images(request, session, neuron)
    poll = fragment_url(request, model_row.slug, layer_row.name, neuron.unit)
    if images:
        section: Any = images
        status: dict[str, Any] = {"status": "done"}
    else:
        job = jobs_db.job_of(session, neuron.id)
        serves, why = runner_serves(runner_of(request), model_row.slug)
        if job is not None and job.status in ("rendering", "failed", "cancelled"):
            status = {
                "status": job.status,
                "error": job.error,
                "elapsed_s": job.elapsed_s,
                "settings": job.settings,
            }
            section = {**status, "poll": poll, "describe": jobs.describe(job.settings), "can_start": serves}
        elif serves:
            status = {"status": "available", "error": None}
            section = {**status, "poll": poll, "can_start": True}
        else:
            status = {"status": "unavailable", "error": why}
            section = {**status, "poll": None, "can_start": False}
    if note:
        status["note"] = note
        if isinstance(section, dict):
            section["note"] = note
    data = {
        "neuron": request.app.state.urls.neuron(model_row.slug, layer_row.name, neuron.unit),
        "images": images,
        "start": {"method": "POST", "url": poll, "csrf": "X-CSRF-Token header or csrf_token field (HTML)"},
        **status,
    }
    return respond(
        request,
        PARTIAL,
        data,
        fmt=fmt,
        json_url=fragment_url(request, model_row.slug, layer_row.name, neuron.unit, "json"),
        context={"section": section, "section_title": TITLE, "fragment": True},
        status_code=status_code,
    )


@page(router, PATH)
def featurevis_fragment(
    model: str, layer: str, unit: str, request: Request, session: ReadSession, fmt: str | None
) -> Response:
    """The section fragment (``.json``: its data; ``status``: done | rendering | failed | cancelled
    | available | unavailable). Never starts a render."""
    return _fragment(request, session, _lookup(session, model, layer, unit), fmt)


@page(router, PATH, methods=("POST",))
async def featurevis_start(
    model: str, layer: str, unit: str, request: Request, session: ReadSession, fmt: str | None
) -> Response:
    """Start an on-demand render (CSRF token for the HTML form); answers with the section."""
    if fmt is None:
        csrf.verify(request)
    found = _lookup(session, model, layer, unit)
    model_row, layer_row, neuron = found
    runner = runner_of(request)
    serves, why = runner_serves(runner, model_row.slug)
    if not serves:
        return _fragment(request, session, found, fmt, note=why, status_code=503 if fmt else 200)
    settings: Settings = request.app.state.settings
    address = request.client.host if request.client else "unknown"
    claim = await jobs.claim_and_start(
        runner,
        request.app.state.write_engine,
        request.app.state.write_sessions,
        app_cache(request, "featurevis_tasks", set),
        neuron_id=neuron.id,
        layer=layer_row.name,
        unit=neuron.unit,
        worker=app_cache(request, "worker_id", lambda: uuid.uuid4().hex),
        client=jobs.client_key(secret(request), address),
        max_jobs=settings.featurevis_max_jobs,
        per_client=settings.featurevis_per_client,
        timeout_s=settings.featurevis_timeout_s,
    )
    if claim.ok:
        await asyncio.sleep(0)  # let the task enqueue before the section is read
    session.expire_all()
    code = 202 if claim.ok else 429 if claim.busy else 200
    code = code if fmt else 200  # htmx swaps only 2xx answers: the note says what happened
    return _fragment(request, session, found, fmt, note=claim.reason, status_code=code)
