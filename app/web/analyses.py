"""The analysis pages below the views: read an upload, present an analysis.

Used by :mod:`app.web.views.analyze` (the pages) and :mod:`app.web.views.typographic` (which
analyses its uploads the same way). This module parses requests and presents; the model work is
:mod:`app.live.analysis`, storage and reads are :mod:`app.db.analyses` (one write path); nothing
here opens a page route.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.config import Settings, server_secret
from app.db import analyses as store_db
from app.live import analysis as live
from app.live.context import ModelContext
from app.neurons import activations as core
from app.web import csrf
from app.web.formats import SafeJSONResponse
from app.web.heatmaps import heatmap_data_uri
from app.web.state import app_cache, get_model_context, require_runner, runner_of
from app.web.uploads import DecodedImage, UploadError, decode_upload, read_body_limited, replay_request
from app.web.urls import Urls

log = logging.getLogger("conceptscope.web")

FORM_FIELDS = ("image", "file", "upload")
N_EXAMPLES = 8
CARD_TTL_S = 30.0  # how long a layer's labels and thumbnails are cached


# --------------------------------------------------------------------------- per-app objects


def secret(request: Request) -> bytes:
    """The server secret (keys analysis ids), created at first start in the data directory."""
    settings: Settings = request.app.state.settings
    return app_cache(request, "server_secret", lambda: server_secret(settings.data_dir))


def writer(request: Request) -> store_db.AnalysisWriter:
    """This app's analysis writer (group commit, 2 s give-up)."""
    settings: Settings = request.app.state.settings
    return app_cache(
        request,
        "analysis_writer",
        lambda: store_db.AnalysisWriter(
            request.app.state.write_engine,
            cap_rows=settings.max_stored_analyses,
            cap_bytes=settings.max_stored_analysis_bytes,
            timeout_s=settings.write_timeout_s,
        ),
    )


def moments(request: Request) -> live.UnitMoments:
    """This app's unit moments (mean and std per unit of each model context's sample)."""
    return app_cache(request, "analysis_moments", live.UnitMoments)


# ------------------------------------------------------------------------ neuron cards


def cards_for(
    request: Request, ctx: ModelContext, wanted: dict[str, set[int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Label, top-example thumbnail and page URL of the neurons in ``wanted`` (layer → units).

    Each layer's labels and thumbnails (:func:`app.db.units.unit_summaries`) are read once and
    kept for :data:`CARD_TTL_S` seconds (a label set from the CLI while the server runs shows up
    within that time). Blocking: call from a worker thread.
    """
    urls: Urls = request.app.state.urls
    cards: dict[tuple[str, int], dict[str, Any]] = {}
    now = time.monotonic()
    stale: dict[str, int] = {}  # layer name → id, read again
    for name in wanted:
        layer = ctx.layer(name)
        cached = ctx.cards.get(name)
        if layer is not None and (cached is None or cached[0] < now):
            stale[name] = layer.id
    if stale:
        read = store_db.read(request.app.state.sessions, store_db.layers_unit_summaries, stale.values())
        for name, layer_id in stale.items():
            table = {
                unit: (s.label, s.label_source, urls.blob(s.thumb.sha256, s.thumb.ext) if s.thumb else None)
                for unit, s in read[layer_id].items()
            }
            ctx.cards[name] = (now + CARD_TTL_S, table)
    for name, units in wanted.items():
        table = ctx.cards[name][1] if ctx.layer(name) is not None else {}
        for unit in units:
            label, source, thumb = table.get(unit, (None, None, None))
            cards[(name, unit)] = {
                "label": label,
                "label_source": source,
                "thumb": thumb,
                "url": urls.neuron(ctx.slug, name, unit),
            }
    return cards


def example_images(request: Request, n: int = N_EXAMPLES) -> list[dict[str, Any]]:
    """A few dataset images, spread over the dataset, to try the form with."""
    urls: Urls = request.app.state.urls
    found = store_db.read(request.app.state.sessions, store_db.example_images, n)
    return [{"id": e.id, "caption": e.caption, "thumb": urls.blob(e.sha256, e.ext)} for e in found]


def example_bytes(request: Request, image_id: int) -> bytes:
    data = store_db.read(request.app.state.sessions, store_db.example_bytes, image_id)
    if data is None:
        raise UploadError(422, f"There is no example image {image_id}.")
    return data


def load_analysis(request: Request, the_id: str) -> Any:
    return store_db.read(request.app.state.sessions, store_db.load_analysis, the_id)


def heatmap_overlay(heatmap: Any, value: float) -> str:
    """The overlay PNG (``data:`` URI) of one neuron's map, scaled by its value."""
    return heatmap_data_uri(np.asarray(heatmap, dtype=np.float32), max(float(value), 1e-12))


def with_overlays(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with each neuron's overlay PNG (encoded once; pages and the JSON twin read it)."""
    for layer in result["layers"]:
        for n in layer["neurons"]:
            n["overlay"] = heatmap_overlay(n["heatmap"], n["value"])
    return result


# ---------------------------------------------------------------------------------- upload


@dataclass
class Upload:
    data: bytes
    classes: list[str]
    top_k: int
    example: int | None = None


def stored_params(upload: Upload) -> dict[str, Any]:
    """What shapes a stored result besides the image: part of its id, stored with it."""
    return {"top_k": upload.top_k}


async def read_upload(request: Request, settings: Settings, *, form_post: bool = False) -> Upload:
    """The image bytes and options of a POST: multipart (``image`` field, or ``example``) or a raw
    image body; size limit enforced while streaming (413). ``form_post``: a browser form, which
    must carry the visitor's CSRF token (403, see :mod:`app.web.csrf`)."""
    body = await read_body_limited(request, settings.max_upload_bytes)
    content_type = request.headers.get("content-type", "").lower()
    params = request.query_params
    classes_text = params.get("classes", "")
    top_k_text = params.get("top_k", "")
    example_text = ""
    data = b""
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await replay_request(request, body).form(max_files=4, max_fields=20)
        except HTTPException as exc:
            raise UploadError(400, f"Could not read the form: {exc.detail}") from exc
        except Exception as exc:
            raise UploadError(400, f"Could not read the form ({type(exc).__name__}).") from exc
        empty_file: str | None = None
        try:
            for name in FORM_FIELDS:
                item = form.get(name)
                if item is not None and not isinstance(item, str):
                    data = await item.read()
                    if data:
                        break
                    empty_file = item.filename or name
            classes_text = str(form.get("classes") or classes_text)
            top_k_text = str(form.get("top_k") or top_k_text)
            example_text = str(form.get("example") or "")
            if form_post:
                csrf.verify(request, form)
        finally:
            await form.close()
        if not data and not example_text:
            if empty_file:
                raise UploadError(422, f"The uploaded file {empty_file!r} is empty: choose an image file.")
            raise UploadError(422, "No image in the upload: send the file in the form field 'image'.")
    else:
        if form_post:
            csrf.verify(request)
        data = body
    example = None
    if example_text and not data:
        if not (example_text.isascii() and example_text.isdigit() and len(example_text) <= 18):
            raise UploadError(422, f"Bad example id {example_text!r}.")
        example = int(example_text)
    top_k_text = top_k_text.strip()
    bad_top_k = f"top_k must be a whole number from 1 to {live.MAX_TOP_K}, not {top_k_text[:40]!r}."
    if top_k_text and not (top_k_text.isascii() and top_k_text.isdigit() and len(top_k_text) <= 9):
        raise UploadError(422, bad_top_k)  # int() would take "١٢" or " -5": only ASCII digits count
    top_k = min(live.MAX_TOP_K, int(top_k_text)) if top_k_text else core.DEFAULT_TOP_K
    if top_k < 1:
        raise UploadError(422, bad_top_k)
    return Upload(data, core.parse_class_names(classes_text), top_k, example)


@dataclass
class Computed:
    id: str
    ctx: ModelContext
    result: dict[str, Any]
    image: tuple[bytes, int, int]
    image_sha256: str
    upload: Upload
    created_at: datetime
    store: bool
    not_stored: str | None = None  # why a store was attempted and gave up


def decode_and_prepare(
    runner: Any, data: bytes, max_pixels: int
) -> tuple[DecodedImage, tuple[bytes, int, int], Any]:
    """Upload bytes → (decoded image, JPEG of the view the model sees, the model's input tensor):
    one worker-thread hop (:func:`app.live.analysis.prepare`)."""
    decoded = decode_upload(data, max_pixels=max_pixels)
    return (decoded, *live.prepare(runner, decoded.image))


async def compute(request: Request, upload: Upload) -> Computed:
    """Decode and run the live model (:mod:`app.live.analysis`); the stored copy of the image is
    encoded meanwhile."""
    settings: Settings = request.app.state.settings
    runner = require_runner(request)
    with runner.incoming():  # the batcher may wait for this request (left before the model call)
        if upload.example is not None:
            upload.data = await run_in_threadpool(example_bytes, request, upload.example)
        decoded, image, tensor = await run_in_threadpool(
            decode_and_prepare, runner, upload.data, settings.max_image_pixels
        )
        ctx = await get_model_context(request, runner.slug)
    if ctx is None:
        raise HTTPException(503, f"The live model {runner.slug!r} is not in this index.")
    unit_moments = moments(request)
    acts = await live.run(runner, ctx, tensor, upload.top_k, unit_moments)
    result = await run_in_threadpool(
        lambda: with_overlays(live.build_result(ctx, acts, decoded.describe(), unit_moments, upload.top_k))
    )
    return Computed(
        store_db.analysis_id(secret(request), ctx.slug, upload.data, stored_params(upload)),
        ctx,
        result,
        image,
        hashlib.sha256(image[0]).hexdigest(),
        upload,
        store_db.utcnow(),
        settings.store_analyses,
    )


def store_now(request: Request, c: Computed) -> bool:
    """Store the analysis (blocking, at most the write timeout); False (and ``c.not_stored``
    says why) when it could not be stored."""
    job = store_db.StoreJob(c.id, c.ctx.id, c.image, stored_params(c.upload), c.result, c.created_at)
    try:
        writer(request).store(job)
        return True
    except store_db.NotStored as exc:
        log.warning("analysis %s not stored: %s", c.id, exc)
        c.not_stored = str(exc)
        return False


async def store(request: Request, c: Computed) -> bool:
    """Store the analysis unless ``--no-store``; False when it was not stored."""
    return c.store and await run_in_threadpool(store_now, request, c)


def _data_uri(image: tuple[bytes, int, int]) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image[0]).decode("ascii")


async def store_and_present(request: Request, c: Computed) -> dict[str, Any]:
    """Store the analysis while its page data (labels, thumbnails, zero-shot) is gathered."""
    urls: Urls = request.app.state.urls

    def page(stored: bool) -> dict[str, Any]:
        return present(
            request,
            c.ctx,
            c.result,
            analysis_id_=c.id,
            stored=stored,
            image_url=urls.blob(c.image_sha256, "jpg") if stored else _data_uri(c.image),
            image_size=(c.image[1], c.image[2]),
            created_at=c.created_at if stored else None,
            zero=None,
            not_stored=c.not_stored,
        )

    def store_then_page() -> tuple[bool, dict[str, Any]]:
        stored = c.store and store_now(request, c)
        return stored, page(stored)

    (stored, data), zero = await asyncio.gather(
        run_in_threadpool(store_then_page),
        live.classify(runner_of(request), c.ctx, c.result, c.upload.classes),
    )
    data["zero_shot"] = zero
    return data


def compact_json(
    data: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON with the C encoder (no indentation): the analysis API answers fast."""
    try:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):  # NaN or numpy values: the careful encoder
        return SafeJSONResponse(data, status_code=status_code, headers=headers)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


# ------------------------------------------------------------------------------ presenting


def present(
    request: Request,
    ctx: ModelContext,
    result: dict[str, Any],
    *,
    analysis_id_: str,
    stored: bool,
    image_url: str,
    image_size: tuple[int | None, int | None],
    created_at: datetime | None,
    zero: dict[str, Any] | None,
    not_stored: str | None = None,
    sort: str = live.DEFAULT_SORT,
) -> dict[str, Any]:
    """The page data (= JSON twin) of an analysis: stored result + labels, thumbnails, links.

    Every neuron carries its percentile and z-score on its own dataset distribution (recomputed
    for analyses stored before z-scores were); each layer's neurons are ranked by ``sort``
    (:data:`app.live.analysis.SORTS`), never by raw value, and the first ``top_k`` of the stored
    ones are shown (the result keeps the top ``top_k`` of the layer by every sort:
    :func:`app.live.analysis.build_result`)."""
    urls: Urls = request.app.state.urls
    wanted = {layer["name"]: {n["unit"] for n in layer["neurons"]} for layer in result["layers"]}
    cards = cards_for(request, ctx, wanted)
    moms = moments(request)
    layers = []
    depth = {layer.name: layer.position for layer in ctx.layers}
    for layer in sorted(result["layers"], key=lambda lr: -depth.get(lr["name"], 0)):  # deepest first
        name = layer["name"]
        meta = ctx.layer(name)
        layers.append(
            {
                "name": layer["name"],
                "kind": meta.kind if meta else None,
                "is_last": meta.is_last if meta else None,
                "grid": list(meta.grid) if meta else None,
                "url": urls.layer(ctx.slug, layer["name"]),
                "sample_size": ctx.percentiles.sample_size(layer["name"]),
                "neurons": live.shown(
                    [
                        {
                            **n,
                            "percentile": n.get("percentile"),
                            "z": n["z"] if "z" in n else live.z_score(ctx, name, n["unit"], n["value"], moms),
                            **cards[(layer["name"], n["unit"])],
                        }
                        for n in layer["neurons"]
                    ],
                    sort,
                    result.get("top_k"),
                ),
            }
        )
    permalink = urls.analysis(analysis_id_) if stored else None
    return {
        "id": analysis_id_,
        "stored": stored,
        "not_stored": None if stored else not_stored,
        "permalink": permalink,
        "json": urls.analysis(analysis_id_, "json") if stored else None,
        "created_at": created_at.isoformat() + "Z" if created_at else None,
        "model": {"slug": ctx.slug, "name": ctx.name, "url": urls.model(ctx.slug)},
        "image": {
            "url": image_url,
            "width": image_size[0],
            "height": image_size[1],
            "view": "the centre square the model sees",
            "source": result.get("source"),
        },
        "layers": layers,
        "zero_shot": zero,
        "value": "max over positions of the neuron's map (pre-ReLU residual sum for ResNet blocks, "
        "post-GELU MLP unit for ViT)",
        "percentile": "share of the sampled dataset images on which the neuron's value is strictly lower",
        "z": "(value − the neuron's mean over the sampled dataset images) / their standard deviation",
        "sort": sort,
        "sorts": dict(live.SORTS),
        "ranked_by": live.SORTS[sort],
    }


def heatmap_overlays(data: dict[str, Any]) -> dict[str, str]:
    """``"layer/unit" → data: URI`` of each listed neuron's heatmap: the stored overlay, or (for
    analyses stored before overlays were) encoded now, without writing anything."""
    overlays = {}
    for layer in data["layers"]:
        for n in layer["neurons"]:
            overlay = n.get("overlay") or heatmap_overlay(n["heatmap"], n["value"])
            overlays[f"{layer['name']}/{n['unit']}"] = overlay
    return overlays


def selected_neuron(data: dict[str, Any], layer: str | None, unit: str | None) -> dict[str, Any] | None:
    if layer is None or unit is None:
        return None
    for lr in data["layers"]:
        if lr["name"] == layer:
            for n in lr["neurons"]:
                if str(n["unit"]) == unit:
                    return {"layer": layer, **n}
    return None
