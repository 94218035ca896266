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

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.config import Settings
from app.db.schema import Layer, Model, Neuron
from app.live import jobs
from app.live.context import runner_serves
from app.web import csrf
from app.web.analyses import secret
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.lookup import find_layer, find_model, find_neuron
from app.web.routing import page
from app.web.sections import featurevis as section
from app.web.state import renders, runner_of

router = APIRouter()

PARTIAL = "_partials/neuron_featurevis.html"
TITLE = "Feature visualization"
PATH = "/models/{model}/layers/{layer}/neurons/{unit}/featurevis"
STATUS_KEYS = ("status", "error", "elapsed_s", "settings")
"""The section's fields that the JSON twin also carries at its top level."""


def fragment_url(request: Request, slug: str, layer: str, unit: int, fmt: str | None = None) -> str:
    """This fragment's URL: the neuron's permalink + ``/featurevis`` (``.json`` twin)."""
    return section.poll_url(request.app.state.urls, slug, layer, unit) + (f".{fmt}" if fmt else "")


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
    job: Any = section.UNREAD,
    note: str | None = None,
    status_code: int = 200,
) -> Response:
    """The section as it stands (read only): images, a render's state, or the start button
    (:func:`app.web.sections.featurevis.section_data`; ``job``: the neuron's job just read)."""
    model_row, layer_row, neuron = found
    urls = request.app.state.urls
    data_section = section.section_data(
        session, urls, model_row.slug, layer_row.name, neuron, runner_of(request), job
    )
    images = data_section if isinstance(data_section, list) else []
    if isinstance(data_section, list):
        status: dict[str, Any] = {"status": "done"}
    else:
        status = {k: data_section[k] for k in STATUS_KEYS if k in data_section}
    if note:
        status["note"] = note
        if isinstance(data_section, dict):
            data_section["note"] = note
    poll = fragment_url(request, model_row.slug, layer_row.name, neuron.unit)
    data = {
        "neuron": urls.neuron(model_row.slug, layer_row.name, neuron.unit, fmt),  # .json twin → .json
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
        context={"section": data_section, "section_title": TITLE, "fragment": True},
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
    started = await jobs.claim_and_start(
        renders(request),
        runner,
        neuron_id=neuron.id,
        layer=layer_row.name,
        unit=neuron.unit,
        client=jobs.client_key(secret(request), address),
        max_jobs=settings.featurevis_max_jobs,
        per_client=settings.featurevis_per_client,
        timeout_s=settings.featurevis_timeout_s,
    )
    claim = started.claim
    code = 202 if claim.ok else 429 if claim.busy else 200
    code = code if fmt else 200  # htmx swaps only 2xx answers: the note says what happened
    return _fragment(request, session, found, fmt, job=started.job, note=claim.reason, status_code=code)
