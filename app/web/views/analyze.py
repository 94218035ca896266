"""``/analyze`` and ``/analyses/{id}``: upload an image, see which neurons fire on it and where.

* ``GET /analyze``: the form (file picker, drag and drop, paste, example images).
* ``POST /analyze`` (multipart ``image``, optional ``classes``): 303 to ``/analyses/{id}``
  (``id`` = hash of the model slug and the image bytes); with ``--no-store`` the result page is
  rendered directly and says it is not shareable.
* ``GET /analyses/{id}`` (+ ``.json``): the image, the top neurons per indexed layer (value,
  percentile in the neuron's dataset distribution, label, top-example thumbnail, link); with
  ``?layer=L&unit=U`` the heatmap of that neuron over the image (an htmx fragment for htmx
  requests); with ``?classes=a,b,c`` zero-shot probabilities.
* ``POST /analyze.json`` (multipart or a raw image body): the same JSON, directly.

Uploads are validated by :mod:`app.web.uploads`; model work goes through the live runner.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from PIL import Image as PILImage
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import MIME_EXT
from app.db.schema import Analysis, Base, Blob, Image, Label, Layer, Model, Neuron, TopExample, utcnow
from app.live.runner import Busy, LiveError, LiveRunner, LiveTimeout
from app.neurons import analysis as core
from app.web.formats import SafeJSONResponse, is_htmx, link_header, respond, split_format
from app.web.heatmaps import colour_bar_stops, heatmap_data_uri
from app.web.uploads import (
    ALLOWED_FORMATS,
    DecodedImage,
    UploadError,
    decode_upload,
    read_body_limited,
    replay_request,
)
from app.web.urls import Urls

router = APIRouter()
log = logging.getLogger("conceptscope.web")

RESULT_VERSION = 1
ID_LENGTH = 24
STORED_SIDE = 448  # longest side of the stored copy (the model's centre-square view)
STORED_QUALITY = 88
MAX_TOP_K = 64
FORM_FIELDS = ("image", "file", "upload")
N_EXAMPLES = 8
CARD_TTL_S = 30.0  # how long a layer's labels and thumbnails are cached


# --------------------------------------------------------------------------- model context


@dataclass(frozen=True)
class LayerMeta:
    id: int
    name: str
    kind: str
    position: int
    n_units: int
    grid: tuple[int, int]
    is_last: bool


@dataclass
class ModelContext:
    """What the live pages need to know about one indexed model (cached per app)."""

    id: int
    slug: str
    name: str
    layers: list[LayerMeta]
    percentiles: core.Percentiles
    cards: dict[str, tuple[float, dict[int, tuple[Any, ...]]]] = field(default_factory=dict)

    def layer(self, name: str) -> LayerMeta | None:
        return next((layer for layer in self.layers if layer.name == name), None)


_context_lock = threading.Lock()
_state_lock = threading.Lock()


def app_cache(request: Request, name: str, factory: Any) -> Any:
    """A per-app object kept on ``app.state`` (created by ``factory()`` on first use)."""
    state = request.app.state
    value = getattr(state, name, None)
    if value is None:
        with _state_lock:
            value = getattr(state, name, None)
            if value is None:
                value = factory()
                setattr(state, name, value)
    return value


def model_context(request: Request, slug: str) -> ModelContext | None:
    """The cached :class:`ModelContext` of model ``slug`` (``None`` when not in the DB)."""
    cache: dict[str, ModelContext] = app_cache(request, "live_models", dict)
    if slug in cache:
        return cache[slug]
    with _context_lock:
        if slug in cache:
            return cache[slug]
        with request.app.state.sessions() as session:
            model = session.scalar(select(Model).where(Model.slug == slug))
            if model is None:
                return None
            rows = session.scalars(select(Layer).where(Layer.model_id == model.id).order_by(Layer.position))
            layers = [
                LayerMeta(r.id, r.name, r.kind, r.position, r.n_units, (r.grid_h, r.grid_w), r.is_last)
                for r in rows
            ]
            ctx = ModelContext(
                model.id, model.slug, model.name, layers, core.Percentiles.from_db(session, model.id)
            )
        cache[slug] = ctx
        return ctx


async def get_model_context(request: Request, slug: str) -> ModelContext | None:
    """:func:`model_context` without a worker-thread hop once it is cached."""
    cached = app_cache(request, "live_models", dict).get(slug)
    return cached if cached is not None else await run_in_threadpool(model_context, request, slug)


def runner_of(request: Request) -> LiveRunner | None:
    return getattr(request.app.state, "live_runner", None)


def arriving(request: Request) -> contextlib.AbstractContextManager[None]:
    """``runner.incoming()`` when a live model runs (see :meth:`LiveRunner.incoming`)."""
    runner = runner_of(request)
    return runner.incoming() if runner is not None else contextlib.nullcontext()


def live_status(request: Request) -> dict[str, Any]:
    """Whether live analysis works here, and why not (for pages and JSON)."""
    runner = runner_of(request)
    if runner is None:
        return {
            "available": False,
            "model": None,
            "reason": "This server runs without a live model "
            "(started with --no-live, or its database has no model).",
        }
    if not runner.running:
        return {
            "available": False,
            "model": runner.slug,
            "reason": runner.error or "The live model is still loading; try again in a moment.",
        }
    return {"available": True, "model": runner.slug, "device": str(runner.device), "reason": None}


def require_runner(request: Request) -> LiveRunner:
    status = live_status(request)
    if not status["available"]:
        raise HTTPException(503, status["reason"], headers={"Retry-After": "5"})
    runner = runner_of(request)
    assert runner is not None
    return runner


def live_http_error(exc: LiveError) -> HTTPException:
    """Runner errors → 503 with ``Retry-After``."""
    if isinstance(exc, Busy):
        return HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, LiveTimeout):
        return HTTPException(503, f"The live model is overloaded: {exc}.", headers={"Retry-After": "5"})
    return HTTPException(503, str(exc), headers={"Retry-After": "5"})


# ------------------------------------------------------------------------ neuron lookups


def _source_rank(source: str) -> int:
    return 0 if source == "manual" else 1 if source.startswith("imported") else 2


def _layer_cards(
    session: Session, urls: Urls, ctx: ModelContext, layer: LayerMeta
) -> dict[int, tuple[Any, ...]]:
    """unit → (label, label source, thumbnail URL) for every neuron of ``layer`` (two queries)."""
    best: dict[int, tuple[Any, ...]] = {}
    for unit, text, source, rank, score in session.execute(
        select(Neuron.unit, Label.label, Label.source, Label.rank, Label.score)
        .join(Label, Label.neuron_id == Neuron.id)
        .where(Neuron.layer_id == layer.id)
    ):
        order = (_source_rank(source), rank, -(score or 0.0))
        if unit not in best or order < best[unit][0]:
            best[unit] = (order, text, source)
    thumbs = {
        unit: urls.blob(sha, MIME_EXT.get(mime, "bin"))
        for unit, sha, mime in session.execute(
            select(Neuron.unit, Blob.sha256, Blob.mime)
            .join(TopExample, and_(TopExample.neuron_id == Neuron.id, TopExample.rank == 0))
            .join(Image, Image.id == TopExample.image_id)
            .join(Blob, Blob.sha256 == Image.thumb_sha256)
            .where(Neuron.layer_id == layer.id)
        )
    }
    units = set(best) | set(thumbs)
    return {
        u: (best[u][1] if u in best else None, best[u][2] if u in best else None, thumbs.get(u))
        for u in units
    }


def neuron_cards(
    session: Session, urls: Urls, ctx: ModelContext, wanted: dict[str, set[int]]
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
                cached = (now + CARD_TTL_S, _layer_cards(session, urls, ctx, layer))
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


def example_images(session: Session, urls: Urls, n: int = N_EXAMPLES) -> list[dict[str, Any]]:
    """A few dataset images, spread over the dataset, to try the form with."""
    total = int(session.scalar(select(func.count()).select_from(Image)) or 0)
    if not total:
        return []
    step = max(1, total // n)
    rows = session.execute(
        select(Image.id, Image.caption, Image.key, Blob.sha256, Blob.mime)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .order_by(Image.position, Image.id)
        .limit(step * n)
    ).all()
    return [
        {"id": r.id, "caption": r.caption or r.key, "thumb": urls.blob(r.sha256, MIME_EXT.get(r.mime, "bin"))}
        for r in rows[::step][:n]
    ]


# ---------------------------------------------------------------------- results and storage


def analysis_id(slug: str, data: bytes) -> str:
    """A stable id for (model, image bytes)."""
    digest = hashlib.sha256(slug.encode() + b"\0" + data)
    return digest.hexdigest()[:ID_LENGTH]


def build_result(ctx: ModelContext, acts: core.ImageActivations, decoded: DecodedImage) -> dict[str, Any]:
    """The stored form of an analysis (plain JSON): top neurons per layer and the embedding."""
    layers = []
    for layer in ctx.layers:
        hits = acts.top.get(layer.name, [])
        layers.append(
            {
                "name": layer.name,
                "neurons": [
                    {
                        "unit": hit.unit,
                        "value": hit.value,
                        "percentile": ctx.percentiles.of(layer.name, hit.unit, hit.value),
                        "heatmap": np.round(hit.heatmap.astype(np.float64), 5).tolist(),
                    }
                    for hit in hits
                ],
            }
        )
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


def _blob_references() -> list[Any]:
    """Every column that references ``blobs.sha256`` (found from the schema)."""
    columns = []
    for table in Base.metadata.tables.values():
        for fk in table.foreign_keys:
            if fk.column.table.name == "blobs":
                columns.append(fk.parent)
    return columns


def store_analysis(
    engine: Engine,
    analysis_id_: str,
    model_id: int,
    image: tuple[bytes, int, int],
    params: dict[str, Any],
    result: dict[str, Any],
    cap: int,
    created_at: datetime | None = None,
) -> None:
    """Insert or refresh an analysis with its image copy, then evict the oldest beyond ``cap``.

    Plain SQL in one transaction on the web's write engine (it writes only the web's own tables,
    analyses and blobs; the ORM's bookkeeping cost more than the writes). Concurrent calls in this
    process are group-committed: whoever takes the write lock writes every analysis waiting for
    it in one transaction (same rows, same eviction as one transaction each, applied in order).
    """
    job = _StoreJob(analysis_id_, model_id, image, params, result, created_at or utcnow())
    writer = _writer(engine)
    with writer.mutex:
        writer.pending.append(job)
    with writer.lock:
        if not job.done:
            with writer.mutex:
                group, writer.pending = writer.pending, []
            try:
                with engine.begin() as conn:
                    for each in group:
                        _write_one(conn, each)
                    evict_oldest(conn, cap)
                outcome: bool | None = True
            except Exception:  # e.g. a read-only DB: each call tries (and fails) on its own
                outcome = None
            for each in group:
                each.stored = outcome
                each.done = True
    if job.stored is None:  # the group failed: this analysis alone, in its own transaction
        with writer.lock, engine.begin() as conn:
            _write_one(conn, job)
            evict_oldest(conn, cap)


@dataclass(eq=False)
class _StoreJob:
    id: str
    model_id: int
    image: tuple[bytes, int, int]
    params: dict[str, Any]
    result: dict[str, Any]
    created_at: datetime
    done: bool = False
    stored: bool | None = None


@dataclass(eq=False)
class _Writer:
    """This process's writes through one engine: a lock held while writing, the waiting jobs.

    Concurrent requests queue on the lock instead of inside SQLite, whose busy handler sleeps
    (1, 2, 5, 10 ms ...) between retries of a locked database; and one transaction (one commit)
    per group instead of one per analysis. Other processes still meet SQLite's own locking.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    mutex: threading.Lock = field(default_factory=threading.Lock)
    pending: list[_StoreJob] = field(default_factory=list)


_writers: dict[int, _Writer] = {}  # id(engine) -> its writer


def _writer(engine: Engine) -> _Writer:
    writer = _writers.get(id(engine))
    if writer is None:
        with _state_lock:
            writer = _writers.setdefault(id(engine), _Writer())
    return writer


def _write_one(conn: Connection, job: _StoreJob) -> None:
    data, width, height = job.image
    sha = hashlib.sha256(data).hexdigest()
    values = {"image_sha256": sha, "params": job.params, "result": job.result, "created_at": job.created_at}
    if conn.execute(select(Blob.sha256).where(Blob.sha256 == sha)).first() is None:
        blob = {"sha256": sha, "mime": "image/jpeg", "data": data, "width": width, "height": height}
        conn.execute(insert(Blob).values(**blob))
    updated = conn.execute(update(Analysis).where(Analysis.id == job.id).values(**values))
    if not updated.rowcount:
        conn.execute(insert(Analysis).values(id=job.id, model_id=job.model_id, kind="image", **values))


def evict_oldest(conn: Connection, cap: int) -> int:
    """Delete the oldest analyses beyond ``cap`` and their image blobs when nothing else uses them."""
    total = int(conn.execute(select(func.count()).select_from(Analysis)).scalar() or 0)
    excess = total - max(0, cap)
    if excess <= 0:
        return 0
    old = conn.execute(
        select(Analysis.id, Analysis.image_sha256).order_by(Analysis.created_at, Analysis.id).limit(excess)
    ).all()
    conn.execute(delete(Analysis).where(Analysis.id.in_([r.id for r in old])))
    for sha in {r.image_sha256 for r in old if r.image_sha256}:
        used = any(
            conn.execute(select(column).where(column == sha).limit(1)).first() is not None
            for column in _blob_references()
        )
        if not used:
            conn.execute(delete(Blob).where(Blob.sha256 == sha))
    return len(old)


def load_analysis(sessions: Any, analysis_id_: str) -> tuple[Analysis, str, int, int] | None:
    """(row, model slug, image width, image height) of a stored analysis."""
    with sessions() as session:
        row = session.get(Analysis, analysis_id_)
        if row is None:
            return None
        slug = session.scalar(select(Model.slug).where(Model.id == row.model_id))
        size = session.execute(select(Blob.width, Blob.height).where(Blob.sha256 == row.image_sha256)).first()
        return row, slug or "?", *(size or (None, None))


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
) -> dict[str, Any]:
    """The page data (= JSON twin) of an analysis: stored result + labels, thumbnails, links."""
    urls: Urls = request.app.state.urls
    wanted = {layer["name"]: {n["unit"] for n in layer["neurons"]} for layer in result["layers"]}
    with request.app.state.sessions() as session:
        cards = neuron_cards(session, urls, ctx, wanted)
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
                "neurons": [{**n, **cards[(layer["name"], n["unit"])]} for n in layer["neurons"]],
            }
        )
    permalink = urls.analysis(analysis_id_) if stored else None
    return {
        "id": analysis_id_,
        "stored": stored,
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
    probs = core.zero_shot(np.asarray(result["embedding"], dtype=np.float32), texts, runner.logit_scale)
    order = np.argsort(-probs)
    return {
        **base,
        "logit_scale": runner.logit_scale,
        "probabilities": {classes[i]: float(probs[i]) for i in range(len(classes))},
        "ranked": [{"class": classes[i], "probability": float(probs[i])} for i in order],
    }


def heatmap_overlays(data: dict[str, Any]) -> dict[str, str]:
    """``"layer/unit" → data: URI`` of each listed neuron's heatmap, scaled by its value."""
    overlays = {}
    for layer in data["layers"]:
        for n in layer["neurons"]:
            heat = np.asarray(n["heatmap"], dtype=np.float32)
            overlays[f"{layer['name']}/{n['unit']}"] = heatmap_data_uri(heat, max(n["value"], 1e-12))
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


def _page_context(data: dict[str, Any], selected: dict[str, Any] | None, classes_text: str) -> dict[str, Any]:
    overlays = heatmap_overlays(data)
    return {
        "title": f"Analysis {data['id'][:8]} · {data['model']['slug']}",
        "current_model": data["model"]["slug"],
        "overlays": overlays,
        "selected": selected,
        "selected_overlay": overlays.get(f"{selected['layer']}/{selected['unit']}") if selected else None,
        "classes_text": classes_text,
        "colour_stops": colour_bar_stops(),
    }


# ---------------------------------------------------------------------------------- upload


@dataclass
class Upload:
    data: bytes
    classes: list[str]
    top_k: int
    example: int | None = None


async def read_upload(request: Request, settings: Settings) -> Upload:
    """The image bytes and options of a POST: multipart (``image`` field, or ``example``) or a raw
    image body; size limit enforced while streaming (413)."""
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
        finally:
            await form.close()
        if not data and not example_text:
            if empty_file:
                raise UploadError(422, f"The uploaded file {empty_file!r} is empty: choose an image file.")
            raise UploadError(422, "No image in the upload: send the file in the form field 'image'.")
    else:
        data = body
    example = None
    if example_text and not data:
        if not example_text.isdigit():
            raise UploadError(422, f"Bad example id {example_text!r}.")
        example = int(example_text)
    try:
        top_k = min(MAX_TOP_K, max(1, int(top_k_text))) if top_k_text else core.DEFAULT_TOP_K
    except ValueError as exc:
        raise UploadError(422, f"top_k must be a whole number, not {top_k_text!r}.") from exc
    return Upload(data, core.parse_class_names(classes_text), top_k, example)


def example_bytes(request: Request, image_id: int) -> bytes:
    with request.app.state.sessions() as session:
        data = session.scalar(
            select(Blob.data).join(Image, Image.thumb_sha256 == Blob.sha256).where(Image.id == image_id)
        )
    if data is None:
        raise UploadError(422, f"There is no example image {image_id}.")
    return bytes(data)


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
        acts = await runner.analyze(tensor, top_k=upload.top_k)
    except LiveError as exc:
        raise live_http_error(exc) from exc
    result = build_result(ctx, acts, decoded)
    return Computed(
        analysis_id(ctx.slug, upload.data),
        ctx,
        result,
        image,
        hashlib.sha256(image[0]).hexdigest(),
        upload,
        utcnow(),
        settings.store_analyses,
    )


def store_now(request: Request, c: Computed) -> bool:
    """Store the analysis (in a worker thread); False when it could not be stored."""
    settings: Settings = request.app.state.settings
    try:
        store_analysis(
            request.app.state.write_engine,
            c.id,
            c.ctx.id,
            c.image,
            {"top_k": c.upload.top_k},
            c.result,
            settings.max_stored_analyses,
            c.created_at,
        )
        return True
    except Exception:  # a read-only DB: still answer, just not shareable
        log.exception("could not store analysis %s", c.id)
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


# ---------------------------------------------------------------------------------- routes


def _form_data(request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    urls: Urls = request.app.state.urls
    with request.app.state.sessions() as session:
        examples = example_images(session, urls)
    return {
        "post": urls.analyze(),
        "post_json": urls.analyze("json"),
        "fields": {
            "image": "the image file (multipart), or send the image as the raw request body",
            "classes": "optional comma-separated class names for zero-shot probabilities",
            "top_k": f"neurons per layer (1–{MAX_TOP_K}, default {core.DEFAULT_TOP_K})",
            "example": "instead of a file: the id of one of the example images",
        },
        "max_upload_bytes": settings.max_upload_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "formats": list(ALLOWED_FORMATS),
        "stores_analyses": settings.store_analyses,
        "max_stored_analyses": settings.max_stored_analyses if settings.store_analyses else 0,
        "live": live_status(request),
        "examples": examples,
    }


def _form_page(
    request: Request, *, error: str | None = None, status: int = 200, classes: str = ""
) -> Response:
    urls: Urls = request.app.state.urls
    data = _form_data(request)
    return respond(
        request,
        "analyze.html",
        data,
        fmt=None,
        json_url=urls.analyze("json"),
        html_url=urls.analyze(),
        context={"title": "Analyze an image", "error": error, "classes_text": classes},
        status_code=status,
    )


@router.get("/analyze")
def analyze_form(request: Request) -> Response:
    """The upload form (drag and drop, paste, examples)."""
    return _form_page(request)


@router.get("/analyze.json")
def analyze_api(request: Request) -> Response:
    """How to use the analysis API, the limits, and whether the live model is up."""
    urls: Urls = request.app.state.urls
    return respond(
        request,
        "analyze.html",
        _form_data(request),
        fmt="json",
        json_url=urls.analyze("json"),
        html_url=urls.analyze(),
    )


@router.post("/analyze")
async def analyze_post(request: Request) -> Response:
    """Analyze an uploaded image; 303 to its page (or the page itself with ``--no-store``)."""
    settings: Settings = request.app.state.settings
    urls: Urls = request.app.state.urls
    classes_text = ""
    failure: tuple[int, str, dict[str, str]] | None = None
    try:
        with arriving(request):
            upload = await read_upload(request, settings)
        classes_text = ", ".join(upload.classes)
        c = await compute(request, upload)
    except UploadError as exc:
        failure = (exc.status, exc.message, {})
    except HTTPException as exc:
        if exc.status_code != 503:
            raise
        failure = (503, str(exc.detail), dict(exc.headers or {}))
    if failure is not None:
        status, message, headers = failure
        page = await run_in_threadpool(
            lambda: _form_page(request, error=message, status=status, classes=classes_text)
        )
        page.headers.update(headers)
        return page
    if c.store and await store(request, c):
        target = urls.with_query(urls.analysis(c.id), classes=classes_text or None)
        return RedirectResponse(target, status_code=303)
    c.store = False
    data = await store_and_present(request, c)
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
            upload = await read_upload(request, settings)
        c = await compute(request, upload)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    data = await store_and_present(request, c)
    headers = {}
    if data["permalink"]:
        headers["Location"] = data["permalink"]
        headers["Link"] = link_header(data["permalink"], "alternate", "text/html")
    return compact_json(data, headers=headers)


@router.get("/analyses/{name}")
async def analysis_page(
    name: str, request: Request, layer: str | None = None, unit: str | None = None, classes: str | None = None
) -> Response:
    """A stored analysis (``.json`` twin); ``layer``+``unit``: that neuron's heatmap (htmx fragment)."""
    the_id, fmt = split_format(name)
    urls: Urls = request.app.state.urls
    found = await run_in_threadpool(load_analysis, request.app.state.sessions, the_id)
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
    zero = await zero_shot(request, ctx, row.result, class_names)
    data = await run_in_threadpool(
        lambda: present(
            request,
            ctx,
            row.result,
            analysis_id_=the_id,
            stored=True,
            image_url=urls.blob(row.image_sha256, "jpg"),
            image_size=(width, height),
            created_at=row.created_at,
            zero=zero,
        )
    )
    selected = selected_neuron(data, layer, unit)
    if layer is not None and unit is not None and selected is None and is_htmx(request):
        raise HTTPException(404, f"Unit {unit} of layer {layer!r} is not among this analysis' top neurons.")
    html_url = urls.with_query(urls.analysis(the_id), classes=", ".join(class_names) or None)
    json_url = urls.with_query(urls.analysis(the_id, "json"), classes=", ".join(class_names) or None)
    fragment = None
    if is_htmx(request) and selected is not None:
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
        context=_page_context(data, selected, ", ".join(class_names)),
    )
    response.headers["Vary"] = "HX-Request"
    if fmt is None:
        response.headers["Link"] = link_header(json_url)
    return response
