"""``/analyze`` and ``/analyses/{id}``: upload an image, see which neurons fire on it and where.

* ``GET /analyze`` (+ ``.json``): the form (file picker, drag and drop, paste, example images);
  the twin says how to use the API, the limits, and whether the live model is up.
* ``POST /analyze`` (multipart ``image``, optional ``classes``; CSRF token): 303 to
  ``/analyses/{id}`` (``id``: an HMAC of the model and the image bytes, keyed by the server's
  secret); with ``--no-store``, or when storing gives up (2 s), the result page is rendered
  directly and says it is not stored.
* ``GET /analyses/{id}`` (+ ``.json``): the image, the top neurons per indexed layer (value,
  percentile in the neuron's dataset distribution, label, top-example thumbnail, link); with
  ``?layer=L&unit=U`` the heatmap of that neuron over the image (an htmx fragment for htmx
  requests); with ``?classes=a,b,c`` zero-shot probabilities; each neuron with its percentile and
  z-score on its own dataset distribution, ranked by percentile or, with ``?sort=z``, by z-score.
* ``POST /analyze.json`` (multipart or a raw image body): the same JSON, directly.

This module parses requests and presents; reading uploads and presenting analyses is
:mod:`app.web.analyses`, the model work :mod:`app.live.analysis`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.live import analysis
from app.neurons import activations as core
from app.web import analyses as work
from app.web.formats import is_htmx, link_header, respond
from app.web.heatmaps import colour_bar_stops
from app.web.routing import page
from app.web.state import arriving, get_model_context, live_status, runner_of
from app.web.uploads import ALLOWED_FORMATS, UploadError
from app.web.urls import Urls

router = APIRouter()


def _form_data(request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    urls: Urls = request.app.state.urls
    return {
        "post": urls.analyze(),
        "post_json": urls.analyze("json"),
        "fields": {
            "image": "the image file (multipart), or send the image as the raw request body",
            "classes": "optional comma-separated class names for zero-shot probabilities",
            "top_k": f"neurons per layer (1–{analysis.MAX_TOP_K}, default {core.DEFAULT_TOP_K})",
            "example": "instead of a file: the id of one of the example images",
        },
        "max_upload_bytes": settings.max_upload_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "formats": list(ALLOWED_FORMATS),
        "stores_analyses": settings.store_analyses,
        "max_stored_analyses": settings.max_stored_analyses if settings.store_analyses else 0,
        "max_stored_analysis_bytes": settings.max_stored_analysis_bytes if settings.store_analyses else 0,
        "live": live_status(request),
        "examples": work.example_images(request),
    }


def _form_page(
    request: Request,
    *,
    fmt: str | None = None,
    error: str | None = None,
    status: int = 200,
    classes: str = "",
) -> Response:
    urls: Urls = request.app.state.urls
    return respond(
        request,
        "analyze.html",
        _form_data(request),
        fmt=fmt,
        json_url=urls.analyze("json"),
        html_url=urls.analyze(),
        context={"title": "Analyze an image", "error": error, "classes_text": classes},
        status_code=status,
    )


def _page_context(data: dict[str, Any], selected: dict[str, Any] | None, classes_text: str) -> dict[str, Any]:
    overlays = work.heatmap_overlays(data)
    return {
        "title": f"Analysis {data['id'][:8]} · {data['model']['slug']}",
        "current_model": data["model"]["slug"],
        "overlays": overlays,
        "selected": selected,
        "selected_overlay": overlays.get(f"{selected['layer']}/{selected['unit']}") if selected else None,
        "classes_text": classes_text,
        "colour_stops": colour_bar_stops(),
    }


@page(router, "/analyze")
def analyze_form(request: Request, fmt: str | None) -> Response:
    """The upload form (drag and drop, paste, examples); ``.json``: how to use the API."""
    return _form_page(request, fmt=fmt)


@router.post("/analyze")
async def analyze_post(request: Request) -> Response:
    """Analyze an uploaded image; 303 to its page (or the page itself when it is not stored)."""
    settings: Settings = request.app.state.settings
    urls: Urls = request.app.state.urls
    classes_text = ""
    failure: tuple[int, str, dict[str, str]] | None = None
    try:
        with arriving(request):
            upload = await work.read_upload(request, settings, form_post=True)
        classes_text = ", ".join(upload.classes)
        c = await work.compute(request, upload)
    except UploadError as exc:
        failure = (exc.status, exc.message, {})
    except HTTPException as exc:
        if exc.status_code != 503:
            raise
        failure = (503, str(exc.detail), dict(exc.headers or {}))
    if failure is not None:
        status, message, headers = failure
        form = await run_in_threadpool(
            lambda: _form_page(request, error=message, status=status, classes=classes_text)
        )
        form.headers.update(headers)
        return form
    if c.store and await work.store(request, c):
        target = urls.with_query(urls.analysis(c.id), classes=classes_text or None)
        return RedirectResponse(target, status_code=303)
    c.store = False
    data = await work.store_and_present(request, c)
    return respond(
        request,
        "analysis.html",
        data,
        fmt=None,
        json_url=urls.analyze("json"),
        context=_page_context(data, None, classes_text),
    )


@router.post("/analyze.json")
async def analyze_post_json(request: Request) -> Response:
    """The JSON API: an image (multipart ``image`` or raw body) → the analysis, directly."""
    settings: Settings = request.app.state.settings
    try:
        with arriving(request):
            upload = await work.read_upload(request, settings)
        c = await work.compute(request, upload)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    data = await work.store_and_present(request, c)
    headers = {}
    if data["permalink"]:
        headers["Location"] = data["permalink"]
        headers["Link"] = link_header(data["permalink"], "alternate", "text/html")
    return work.compact_json(data, headers=headers)


@page(router, "/analyses/{the_id}")
async def analysis_page(
    the_id: str,
    request: Request,
    fmt: str | None,
    layer: str | None = None,
    unit: str | None = None,
    classes: str | None = None,
    sort: str | None = None,
) -> Response:
    """A stored analysis (``.json`` twin); ``layer``+``unit``: that neuron's heatmap (htmx fragment);
    ``sort``: ``percentile`` (default) or ``z``."""
    urls: Urls = request.app.state.urls
    if sort is not None and sort not in analysis.SORTS:
        raise HTTPException(422, f"sort must be one of {', '.join(analysis.SORTS)}, not {sort!r}.")
    order = sort or analysis.DEFAULT_SORT
    sort_param = None if order == analysis.DEFAULT_SORT else order
    found = await run_in_threadpool(work.load_analysis, request, the_id)
    if found is None:
        settings: Settings = request.app.state.settings
        raise HTTPException(
            404,
            f"No stored analysis {the_id!r}. Analyses are kept until "
            f"{settings.max_stored_analyses} newer ones "
            "replace them (oldest first); upload the image again to recreate it.",
        )
    row, slug, width, height = found
    ctx = await get_model_context(request, slug)
    if ctx is None:
        raise HTTPException(404, f"The model {slug!r} of analysis {the_id!r} is no longer indexed.")
    class_names = core.parse_class_names(classes)
    zero = await analysis.classify(runner_of(request), ctx, row.result, class_names)
    data = await run_in_threadpool(
        lambda: work.present(
            request,
            ctx,
            row.result,
            analysis_id_=the_id,
            stored=True,
            image_url=urls.blob(row.image_sha256, "jpg"),
            image_size=(width, height),
            created_at=row.created_at,
            zero=zero,
            sort=order,
        )
    )
    selected = work.selected_neuron(data, layer, unit)
    if layer is not None and unit is not None and selected is None and is_htmx(request):
        raise HTTPException(404, f"Unit {unit} of layer {layer!r} is not among this analysis' top neurons.")
    classes_param = ", ".join(class_names) or None

    def sort_url(key: str) -> str:  # this page ranked by ``key`` (selected neuron and classes kept)
        kept = {"layer": layer, "unit": unit} if selected else {}
        order_param = None if key == analysis.DEFAULT_SORT else key
        return urls.with_query(urls.analysis(the_id), classes=classes_param, **kept, sort=order_param)

    html_url = urls.with_query(urls.analysis(the_id), classes=classes_param, sort=sort_param)
    json_url = urls.with_query(urls.analysis(the_id, "json"), classes=classes_param, sort=sort_param)
    fragment = None
    wants_zeroshot = request.headers.get("hx-target") == "analysis-zeroshot"  # Classify keeps layer/unit
    if is_htmx(request) and classes is not None and wants_zeroshot:
        fragment = "_partials/analysis_zeroshot.html"
    elif is_htmx(request) and selected is not None:
        fragment = "_partials/analysis_figure.html"
    elif is_htmx(request) and classes is not None:
        fragment = "_partials/analysis_zeroshot.html"
    response = respond(
        request,
        "analysis.html",
        data,
        fmt=fmt,
        json_url=json_url,
        html_url=html_url,
        fragment=fragment,
        context={
            **_page_context(data, selected, ", ".join(class_names)),
            "sort_param": sort_param,
            "sort_urls": {key: sort_url(key) for key in analysis.SORTS},
        },
    )
    response.headers["Vary"] = "HX-Request"
    if fmt is None:
        response.headers["Link"] = link_header(json_url)
    return response
