"""The analysis pages' work below the views: read an upload, run the live model, store, present.

Used by :mod:`app.web.views.analyze` (the pages) and :mod:`app.web.views.typographic` (which
analyses its attack images the same way). Storage is :mod:`app.db.analyses` (one write path);
runner status and errors are :mod:`app.live.context`; nothing here opens a page route.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import Response
from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool

from app.config import Settings, server_secret
from app.db import analyses as store_db
from app.db.units import unit_summaries
from app.live.context import LayerMeta, ModelContext, live_http_error
from app.live.runner import LiveError, LiveRunner
from app.neurons import activations as core
from app.neurons import zeroshot
from app.web import csrf
from app.web.formats import SafeJSONResponse
from app.web.heatmaps import heatmap_data_uri
from app.web.state import app_cache, get_model_context, live_status, require_runner, runner_of
from app.web.uploads import DecodedImage, UploadError, decode_upload, read_body_limited, replay_request
from app.web.urls import Urls

log = logging.getLogger("conceptscope.web")

#: Also used through this module by the typographic lab.
__all__ = ["Upload", "compute", "store", "live_status", "require_runner", "runner_of", "live_http_error"]

RESULT_VERSION = 1
STORED_SIDE = 448  # longest side of the stored copy (the model's centre-square view)
STORED_QUALITY = 88
MAX_TOP_K = 64
FORM_FIELDS = ("image", "file", "upload")
N_EXAMPLES = 8
CARD_TTL_S = 30.0  # how long a layer's labels and thumbnails are cached
CANDIDATES_PER_SHOWN = 4
"""The runner returns this many times ``top_k`` units by raw value (at most :data:`MAX_TOP_K`);
the ``top_k`` of them highest on their own scale (percentile, then z) are kept (issue 16)."""
SORTS = {
    "percentile": "percentile in the neuron's own dataset distribution (ties: z-score)",
    "z": "z-score on the neuron's own dataset distribution: (value − its mean) / its std",
}
DEFAULT_SORT = "percentile"


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


# ------------------------------------------------------------------------ neuron cards


def _layer_cards(session: Any, urls: Urls, layer: LayerMeta) -> dict[int, tuple[Any, ...]]:
    """unit → (label, label source, thumbnail URL) for every neuron of ``layer``."""
    return {
        unit: (s.label, s.label_source, urls.blob(s.thumb.sha256, s.thumb.ext) if s.thumb else None)
        for unit, s in unit_summaries(session, layer.id).items()
    }


def neuron_cards(
    session: Any, urls: Urls, ctx: ModelContext, wanted: dict[str, set[int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Label, top-example thumbnail and page URL of the neurons in ``wanted`` (layer → units).

    Each layer's labels and thumbnails are read once and kept for :data:`CARD_TTL_S` seconds (a
    label set from the CLI while the server runs shows up within that time).
    """
    cards: dict[tuple[str, int], dict[str, Any]] = {}
    now = time.monotonic()
    for name, units in wanted.items():
        layer = ctx.layer(name)
        table: dict[int, tuple[Any, ...]] = {}
        if layer is not None:
            cached = ctx.cards.get(name)
            if cached is None or cached[0] < now:
                cached = (now + CARD_TTL_S, _layer_cards(session, urls, layer))
                ctx.cards[name] = cached
            table = cached[1]
        for unit in units:
            label, source, thumb = table.get(unit, (None, None, None))
            cards[(name, unit)] = {
                "label": label,
                "label_source": source,
                "thumb": thumb,
                "url": urls.neuron(ctx.slug, name, unit),
            }
    return cards


def cards_for(request: Request, ctx: ModelContext, wanted: dict[str, set[int]]) -> dict[tuple[str, int], Any]:
    """:func:`neuron_cards` in its own read session (blocking: call from a worker thread)."""
    with request.app.state.sessions() as session:
        return neuron_cards(session, request.app.state.urls, ctx, wanted)


def example_images(request: Request, n: int = N_EXAMPLES) -> list[dict[str, Any]]:
    """A few dataset images, spread over the dataset, to try the form with."""
    urls: Urls = request.app.state.urls
    with request.app.state.sessions() as session:
        found = store_db.example_images(session, n)
    return [{"id": e.id, "caption": e.caption, "thumb": urls.blob(e.sha256, e.ext)} for e in found]


def example_bytes(request: Request, image_id: int) -> bytes:
    with request.app.state.sessions() as session:
        data = store_db.example_bytes(session, image_id)
    if data is None:
        raise UploadError(422, f"There is no example image {image_id}.")
    return data


def load_analysis(request: Request, the_id: str) -> Any:
    with request.app.state.sessions() as session:
        return store_db.load_analysis(session, the_id)


# ------------------------------------------------------------- every value on its unit's scale

_MOMENTS: weakref.WeakKeyDictionary[Any, dict[str, tuple[np.ndarray, np.ndarray]]] = (
    weakref.WeakKeyDictionary()
)
_MOMENTS_LOCK = threading.Lock()


def unit_moments(ctx: ModelContext, layer: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std of every unit of ``layer`` over the dataset sample (``None`` without one);
    computed once per model context."""
    percentiles = ctx.percentiles
    if not percentiles.has(layer):
        return None
    with _MOMENTS_LOCK:
        per_layer = _MOMENTS.setdefault(percentiles, {})
        if layer not in per_layer:
            sample = percentiles.sorted[layer].astype(np.float64)
            per_layer[layer] = (sample.mean(0), sample.std(0))
        return per_layer[layer]


def z_score(ctx: ModelContext, layer: str, unit: int, value: float) -> float | None:
    """``(value − mean) / std`` of ``unit`` over the dataset sample; ``None`` without a sample or
    for a constant unit."""
    moments = unit_moments(ctx, layer)
    if moments is None or not 0 <= unit < len(moments[0]):
        return None
    mean, std = float(moments[0][unit]), float(moments[1][unit])
    if not std > 1e-12 or not np.isfinite(value):
        return None
    return round((float(value) - mean) / std, 3)


def rank_key(sort: str) -> Any:
    """Sort key (best first) of a shown neuron for ``sort`` (``percentile`` or ``z``): on the
    unit's own scale, never by raw value; ties broken by the other figure, then the unit."""

    def figure(x: Any) -> float:
        return float(x) if x is not None else -np.inf

    if sort == "z":
        return lambda n: (-figure(n.get("z")), -figure(n.get("percentile")), n["unit"])
    return lambda n: (-figure(n.get("percentile")), -figure(n.get("z")), n["unit"])


def candidates_for(top_k: int) -> int:
    """How many units by raw value the runner returns so that ``top_k`` can be chosen by scale."""
    return max(top_k, min(MAX_TOP_K, CANDIDATES_PER_SHOWN * top_k))


# ---------------------------------------------------------------------- results and storage


def heatmap_overlay(heatmap: Any, value: float) -> str:
    """The overlay PNG (``data:`` URI) of one neuron's map, scaled by its value."""
    return heatmap_data_uri(np.asarray(heatmap, dtype=np.float32), max(float(value), 1e-12))


def build_result(
    ctx: ModelContext, acts: core.ImageActivations, decoded: DecodedImage, top_k: int | None = None
) -> dict[str, Any]:
    """The stored form of an analysis (plain JSON): top neurons per layer with their heatmaps and
    overlay PNGs (encoded once here; pages and the JSON twin read them), and the embedding.

    The top neurons are the ``top_k`` of the runner's hits (all when ``None``) highest on their
    own scale: percentile in their dataset distribution, then z-score (issue 16)."""
    layers = []
    key = rank_key(DEFAULT_SORT)
    for layer in ctx.layers:
        hits = acts.top.get(layer.name, [])
        scored = sorted(
            (
                {
                    "unit": hit.unit,
                    "value": hit.value,
                    "percentile": ctx.percentiles.of(layer.name, hit.unit, hit.value),
                    "z": z_score(ctx, layer.name, hit.unit, hit.value),
                    "hit": hit,
                }
                for hit in hits
            ),
            key=key,
        )
        neurons = []
        for n in scored[:top_k] if top_k is not None else scored:
            hit = n.pop("hit")
            heat = np.round(hit.heatmap.astype(np.float64), 5)
            neurons.append({**n, "heatmap": heat.tolist(), "overlay": heatmap_overlay(heat, hit.value)})
        layers.append({"name": layer.name, "neurons": neurons})
    embedding = acts.embedding.tolist() if acts.embedding is not None else None
    return {"version": RESULT_VERSION, "source": decoded.describe(), "layers": layers, "embedding": embedding}


def encode_view(view: Any) -> tuple[bytes, int, int]:
    """The stored copy of an upload: the model's view as JPEG (at most ``STORED_SIDE`` px)."""
    if max(view.size) > STORED_SIDE:
        view = view.copy()
        view.thumbnail((STORED_SIDE, STORED_SIDE), PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    view.convert("RGB").save(buffer, format="JPEG", quality=STORED_QUALITY)
    return buffer.getvalue(), view.width, view.height


# ---------------------------------------------------------------------------------- upload


@dataclass
class Upload:
    data: bytes
    classes: list[str]
    top_k: int
    example: int | None = None


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
    try:
        top_k = min(MAX_TOP_K, max(1, int(top_k_text))) if top_k_text else core.DEFAULT_TOP_K
    except ValueError as exc:
        raise UploadError(422, f"top_k must be a whole number, not {top_k_text!r}.") from exc
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


def decode_and_preprocess(
    runner: LiveRunner, data: bytes, max_pixels: int
) -> tuple[DecodedImage, tuple[bytes, int, int], Any]:
    """Upload bytes → (decoded image, JPEG of the view the model sees, the model's input tensor).

    One worker-thread hop; the stored copy is exactly the model's view (resize + centre crop),
    so heatmaps overlay it without any offset, like the dataset thumbnails.
    """
    decoded = decode_upload(data, max_pixels=max_pixels)
    view_of, to_tensor = core.split_preprocess(runner.loaded.preprocess)
    view = view_of(decoded.image)
    return decoded, encode_view(view), to_tensor(view)


async def compute(request: Request, upload: Upload) -> Computed:
    """Decode and run the live model; the stored copy of the image is encoded meanwhile."""
    settings: Settings = request.app.state.settings
    runner = require_runner(request)
    with runner.incoming():  # the batcher may wait for this request (left before the model call)
        if upload.example is not None:
            upload.data = await run_in_threadpool(example_bytes, request, upload.example)
        decoded, image, tensor = await run_in_threadpool(
            decode_and_preprocess, runner, upload.data, settings.max_image_pixels
        )
        ctx = await get_model_context(request, runner.slug)
    if ctx is None:
        raise HTTPException(503, f"The live model {runner.slug!r} is not in this index.")
    try:
        acts = await runner.analyze(tensor, top_k=candidates_for(upload.top_k))
    except LiveError as exc:
        raise live_http_error(exc) from exc
    result = await run_in_threadpool(build_result, ctx, acts, decoded, upload.top_k)
    return Computed(
        store_db.analysis_id(secret(request), ctx.slug, upload.data),
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
    job = store_db.StoreJob(c.id, c.ctx.id, c.image, {"top_k": c.upload.top_k}, c.result, c.created_at)
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
        run_in_threadpool(store_then_page), zero_shot(request, c.ctx, c.result, c.upload.classes)
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
    sort: str = DEFAULT_SORT,
) -> dict[str, Any]:
    """The page data (= JSON twin) of an analysis: stored result + labels, thumbnails, links.

    Every neuron carries its percentile and z-score on its own dataset distribution (recomputed
    for analyses stored before z-scores were); each layer's neurons are ranked by ``sort``
    (:data:`SORTS`), never by raw value."""
    urls: Urls = request.app.state.urls
    wanted = {layer["name"]: {n["unit"] for n in layer["neurons"]} for layer in result["layers"]}
    cards = cards_for(request, ctx, wanted)
    layers = []
    depth = {layer.name: layer.position for layer in ctx.layers}
    for layer in sorted(result["layers"], key=lambda lr: -depth.get(lr["name"], 0)):  # deepest first
        meta = ctx.layer(layer["name"])
        layers.append(
            {
                "name": layer["name"],
                "kind": meta.kind if meta else None,
                "is_last": meta.is_last if meta else None,
                "grid": list(meta.grid) if meta else None,
                "url": urls.layer(ctx.slug, layer["name"]),
                "sample_size": ctx.percentiles.sample_size(layer["name"]),
                "neurons": sorted(
                    (
                        {
                            **n,
                            "percentile": n.get("percentile"),
                            "z": n["z"] if "z" in n else z_score(ctx, layer["name"], n["unit"], n["value"]),
                            **cards[(layer["name"], n["unit"])],
                        }
                        for n in layer["neurons"]
                    ),
                    key=rank_key(sort),
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
        "percentile": "share of the sampled dataset images on which the neuron's value is lower or equal",
        "z": "(value − the neuron's mean over the sampled dataset images) / their standard deviation",
        "sort": sort,
        "sorts": dict(SORTS),
        "ranked_by": SORTS[sort],
    }


async def zero_shot(
    request: Request, ctx: ModelContext, result: dict[str, Any], classes: list[str]
) -> dict[str, Any] | None:
    """Zero-shot probabilities of ``classes`` for a stored result (needs the live model)."""
    if not classes:
        return None
    runner = runner_of(request)
    base: dict[str, Any] = {"classes": classes, "prompt": "each class name is encoded as written"}
    if result.get("embedding") is None:
        return {**base, "error": "this analysis has no image embedding"}
    if runner is None or not runner.running or runner.slug != ctx.slug:
        return {
            **base,
            "error": f"zero-shot needs the live model {ctx.slug!r}, which this server has not loaded",
        }
    try:
        texts = await runner.encode_texts(classes)
    except LiveError as exc:
        raise live_http_error(exc) from exc
    probs = zeroshot.zero_shot(np.asarray(result["embedding"], dtype=np.float32), texts, runner.logit_scale)
    order = np.argsort(-probs)
    return {
        **base,
        "logit_scale": runner.logit_scale,
        "probabilities": {classes[i]: float(probs[i]) for i in range(len(classes))},
        "ranked": [{"class": classes[i], "probability": float(probs[i])} for i in order],
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
