"""``/search?q=...&model=...``: the neurons that stand for a piece of text (and ``.json``).

Two live rankings, both through the live runner:

* **zero-shot neuron search**: last-block neurons ranked by the dot product of their direction
  in the joint embedding space (table ``directions``) with the query's unit-length text
  embedding, i.e. how far one unit of the neuron's activation moves the image embedding towards
  the query;
* **reading neurons**: the query rendered as an image of text (:func:`app.neurons.render.render_text`)
  and the neurons that fire most on that image, with their dataset percentile.

htmx requests (live results while typing) get only the results fragment. An empty query gets a
help page with suggestions; an over-long query is truncated to the tokenizer's context, and the
page says so.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from app.db import from_bytes
from app.db.schema import Direction, Label, Layer, Model, Neuron
from app.live.context import ModelContext, live_http_error
from app.live.runner import LiveError, LiveRunner
from app.neurons import activations as core
from app.neurons.render import render_text
from app.web.analyses import neuron_cards
from app.web.cache import versioned_cache
from app.web.formats import respond
from app.web.recipe import search_recipe
from app.web.state import app_cache, get_model_context, runner_of
from app.web.urls import Urls

router = APIRouter()

MAX_QUERY_CHARS = 500
N_ZERO_SHOT = 20
N_READING = 10
CACHE_SIZE = 512
FALLBACK_SUGGESTIONS = ("red", "a dog", "a face", "text", "water", "a star")

SCORE_HELP = (
    "score = (the neuron's direction in the joint image–text embedding space · the query's "
    "unit-length text embedding) × the standard deviation of the neuron's value over the indexed "
    "dataset: how far a typical change of this neuron's activation moves the image embedding "
    "towards the query. raw = the dot product per unit of activation; cos = raw ÷ the direction's "
    "length."
)
CONFIDENCE_HELP = (
    "confidence = the share of 256 ordinary words (BPE words of frequency ranks 10,000–30,000, the "
    "null) whose best zero-shot score is below this query's; z = a neuron's score in standard "
    "deviations of its own scores over those words."
)
READING_HELP = (
    "The query written as an image of text (dark on white, at the model's input size); value = the "
    "neuron's activation on that image (max over positions), percentile = within the neuron's "
    "dataset distribution."
)


@dataclass
class Query:
    """A search query after cleaning and truncation to the tokenizer's context."""

    raw: str
    text: str  # what is encoded and rendered
    truncated: bool
    note: str | None
    n_tokens: int | None
    max_tokens: int | None


def clean_query(raw: str | None) -> str:
    return " ".join((raw or "").split())


def fit_to_context(tokenizer: Any, context_length: int, text: str) -> Query:
    """Truncate ``text`` to what the tokenizer keeps (``context_length`` minus start/end tokens)."""
    raw = text
    note = None
    truncated = False
    if len(text) > MAX_QUERY_CHARS:
        text, truncated = text[:MAX_QUERY_CHARS], True
    encode = getattr(tokenizer, "encode", None)
    decode = getattr(tokenizer, "decode", None)
    max_tokens = max(1, context_length - 2)
    n_tokens = None
    if callable(encode):
        try:
            ids = list(encode(text))
        except Exception:  # an unusual tokenizer: rely on its own truncation
            ids = None
        if ids is not None:
            n_tokens = len(ids)
            if n_tokens > max_tokens:
                truncated = True
                if callable(decode):
                    text = " ".join(str(decode(ids[:max_tokens])).split())
                else:
                    text = " ".join(text.split()[:max_tokens])
    if truncated:
        note = (
            f"Your query is longer than the model's text context ({max_tokens} tokens); "
            f"only “{text}” was used."
        )
    return Query(raw, text, truncated, note, n_tokens, max_tokens)


class _LRU:
    """A small thread-safe LRU cache for model outputs keyed by (model, text)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def _cache(request: Request) -> _LRU:
    return app_cache(request, "live_search_cache", lambda: _LRU(CACHE_SIZE))


@dataclass
class LayerDirections:
    """A last-block layer's unit directions and each unit's activation spread over the dataset."""

    directions: np.ndarray  # (units, embed_dim) float32
    scale: np.ndarray  # (units,) the std of each unit's value over the indexed dataset (1 if unknown)


def directions(request: Request, ctx: ModelContext) -> dict[str, LayerDirections]:
    """The stored unit directions of the model's last-block layers and unit stds (cached per app)."""
    cache: dict[str, dict[str, LayerDirections]] = versioned_cache(request, "live_directions", dict)
    if ctx.slug not in cache:
        found = {}
        with request.app.state.sessions() as session:
            rows = session.execute(
                select(Layer.id, Layer.name, Direction)
                .join(Direction, Direction.layer_id == Layer.id)
                .where(Layer.model_id == ctx.id)
            ).all()
            for layer_id, name, d in rows:
                matrix = from_bytes(d.values, "float32", (d.n_units, d.embed_dim))
                scale = np.ones(d.n_units, dtype=np.float32)
                for unit, std in session.execute(
                    select(Neuron.unit, Neuron.std).where(Neuron.layer_id == layer_id)
                ):
                    if 0 <= unit < d.n_units and std is not None and np.isfinite(std):
                        scale[unit] = std
                found[name] = LayerDirections(matrix, scale)
        cache[ctx.slug] = found
    return cache[ctx.slug]


def suggestions(request: Request, ctx: ModelContext | None) -> list[str]:
    """Example queries: the best-scored labels of the model's last-block neurons, else generic ones."""
    if ctx is None:
        return list(FALLBACK_SUGGESTIONS)
    last = [layer.id for layer in ctx.layers if layer.is_last]
    with request.app.state.sessions() as session:
        rows = session.execute(
            select(Label.label, func.max(Label.score))
            .join(Neuron, Neuron.id == Label.neuron_id)
            .where(Neuron.layer_id.in_(last))
            .group_by(Label.label)
            .order_by(func.max(Label.score).desc())
            .limit(12)
        ).all()
    found = [r[0] for r in rows if r[0] and len(r[0]) <= 40]
    return found or list(FALLBACK_SUGGESTIONS)


def default_model(request: Request) -> str | None:
    runner = runner_of(request)
    if runner is not None:
        return runner.slug
    with request.app.state.sessions() as session:
        return session.scalar(select(Model.slug).order_by(Model.id).limit(1))


def _png_data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


async def text_embedding(request: Request, runner: LiveRunner, text: str) -> np.ndarray:
    key = ("text", runner.slug, text)
    cached = _cache(request).get(key)
    if cached is None:
        cached = (await runner.encode_texts([text]))[0]
        _cache(request).put(key, cached)
    return cached


async def reading_activations(request: Request, runner: LiveRunner, text: str) -> tuple[Any, str]:
    key = ("reading", runner.slug, text)
    cached = _cache(request).get(key)
    if cached is None:
        image = await run_in_threadpool(render_text, text, runner.loaded.image_size)
        acts = await runner.analyze(image, top_k=N_READING)
        cached = (acts, await run_in_threadpool(_png_data_uri, image))
        _cache(request).put(key, cached)
    return cached


def zero_shot_ranking(
    dirs: dict[str, LayerDirections], embedding: np.ndarray, n: int
) -> list[dict[str, Any]]:
    """Per last-block layer: the ``n`` units whose typical activation moves the image embedding
    furthest towards the text ``embedding``: (direction · embedding) × the unit's std."""
    layers = []
    for name, layer in dirs.items():
        raw = layer.directions @ embedding
        scores = raw * layer.scale
        norms = np.linalg.norm(layer.directions, axis=1)
        top = np.argsort(-scores, kind="stable")[:n]
        layers.append(
            {
                "name": name,
                "neurons": [
                    {
                        "unit": int(u),
                        "score": float(scores[u]),
                        "raw": float(raw[u]),
                        "cosine": float(raw[u] / norms[u]) if norms[u] > 0 else None,
                        "std": float(layer.scale[u]),
                    }
                    for u in top
                ],
            }
        )
    return layers


async def calibrate(
    request: Request,
    runner: LiveRunner,
    slug: str,
    dirs: dict[str, LayerDirections],
    embedding: np.ndarray,
    zero_layers: list[dict[str, Any]],
    data: dict[str, Any],
    text: str,
) -> None:
    """Issue 16: each zero-shot unit's z against the null words, the query's confidence (share of
    null words whose best score is lower), and out-of-vocabulary words; notes say so."""
    from app.neurons.calibration import CONFIDENT, fit_null, null_words, out_of_vocabulary

    cache: dict[str, Any] = app_cache(request, "search_nulls", dict)
    if slug not in cache:
        null_emb = await runner.encode_texts(null_words())
        cache[slug] = {
            name: fit_null((null_emb @ layer.directions.T) * layer.scale) for name, layer in dirs.items()
        }
    nulls = cache[slug]
    confidences = []
    for layer in zero_layers:
        null = nulls.get(layer["name"])
        if null is None:
            continue
        best = float(((dirs[layer["name"]].directions @ embedding) * dirs[layer["name"]].scale).max())
        layer["confidence"] = round(null.confidence_raw(best), 4)
        confidences.append(layer["confidence"])
        for n in layer["neurons"]:
            n["z"] = round(float(null.z(np.float32(n["score"]))[n["unit"]]), 3)
    oov = out_of_vocabulary(runner.loaded.tokenizer, text)
    confidence = min(confidences) if confidences else None
    data["confidence"] = confidence
    data["out_of_vocabulary"] = oov
    warnings = []
    if oov:
        warnings.append(
            "Not a word this model's tokenizer knows: " + ", ".join(f"“{w}”" for w in oov)
            + " is split into pieces, so the results below are about the pieces, not a concept."
        )
    if confidence is not None and confidence < CONFIDENT:
        warnings.append(
            f"Low confidence: the best neuron scores higher than for only {confidence:.0%} of "
            "ordinary words nobody asked for (the null); these results may mean nothing."
        )
    data["warnings"] = warnings
    data["explain"]["confidence"] = CONFIDENCE_HELP


def reading_ranking(ctx: ModelContext, acts: core.ImageActivations) -> list[dict[str, Any]]:
    layers = []
    for layer in sorted(ctx.layers, key=lambda lr: -lr.position):
        hits = acts.top.get(layer.name, [])
        layers.append(
            {
                "name": layer.name,
                "neurons": [
                    {
                        "unit": hit.unit,
                        "value": hit.value,
                        "percentile": ctx.percentiles.of(layer.name, hit.unit, hit.value),
                    }
                    for hit in hits
                ],
            }
        )
        # issue 16: on the unit's own scale, a unit at the 100th percentile comes before a larger raw value
        layers[-1]["neurons"].sort(key=lambda n: -(n["percentile"] if n["percentile"] is not None else -1.0))
    return layers


def _enrich(request: Request, ctx: ModelContext, *sections: list[dict[str, Any]]) -> None:
    urls: Urls = request.app.state.urls
    wanted: dict[str, set[int]] = {}
    for layers in sections:
        for layer in layers:
            wanted.setdefault(layer["name"], set()).update(n["unit"] for n in layer["neurons"])
    with request.app.state.sessions() as session:
        cards = neuron_cards(session, urls, ctx, wanted)
    for layers in sections:
        for layer in layers:
            layer["url"] = urls.layer(ctx.slug, layer["name"])
            for n in layer["neurons"]:
                n.update(cards[(layer["name"], n["unit"])])


async def search_data(request: Request, q: str | None, model: str | None) -> tuple[dict[str, Any], int]:
    """The search page's data (= JSON twin) and HTTP status."""
    urls: Urls = request.app.state.urls
    text = clean_query(q)
    slug = model or await run_in_threadpool(default_model, request)
    ctx = await get_model_context(request, slug) if slug else None
    data: dict[str, Any] = {
        "query": text,
        "model": {"slug": slug, "url": urls.model(slug)} if ctx else None,
        "used_query": None,
        "truncated": False,
        "note": None,
        "zero_shot": None,
        "reading": None,
        "recipe": None,  # concept recipe (issue 6, app/web/recipe.py)
        "suggestions": [],
        "explain": {
            "zero_shot": SCORE_HELP.format(vocabulary="a concept vocabulary"),
            "reading": READING_HELP,
        },
    }
    if model and ctx is None:
        raise HTTPException(404, f"No model {model!r} in this index.")
    if not text:
        data["suggestions"] = [
            {"query": s, "url": urls.search(s, slug)}
            for s in await run_in_threadpool(suggestions, request, ctx)
        ]
        data["note"] = "Type a word or phrase to find the neurons that stand for it."
        return data, 200
    runner = runner_of(request)
    if runner is None or not runner.running or ctx is None or runner.slug != ctx.slug:
        why = (runner.error if runner is not None and runner.error else None) or (
            "searching by text needs the live model"
            + (f" {slug!r}" if slug else "")
            + ", which this server has not loaded"
        )
        data["note"] = why[0].upper() + why[1:] + "."
        return data, 503
    query = await run_in_threadpool(
        fit_to_context, runner.loaded.tokenizer, runner.loaded.context_length, text
    )
    data["used_query"], data["truncated"], data["note"] = query.text, query.truncated, query.note
    try:
        embedding, (acts, image_uri) = await asyncio.gather(
            text_embedding(request, runner, query.text), reading_activations(request, runner, query.text)
        )
    except LiveError as exc:
        raise live_http_error(exc) from exc
    dirs = await run_in_threadpool(directions, request, ctx)
    zero_layers = zero_shot_ranking(dirs, embedding, N_ZERO_SHOT)
    await calibrate(request, runner, ctx.slug, dirs, embedding, zero_layers, data, query.text)
    reading_layers = reading_ranking(ctx, acts)
    matrices = {name: layer.directions for name, layer in dirs.items()}
    data["recipe"] = await search_recipe(request, runner, ctx.slug, embedding, matrices)
    await run_in_threadpool(_enrich, request, ctx, zero_layers, reading_layers)
    data["zero_shot"] = (
        {"layers": zero_layers}
        if zero_layers
        else {
            "layers": [],
            "error": "This index has no neuron directions (run `conceptscope precompute "
            "activations` to store them).",
        }
    )
    data["reading"] = {"image": image_uri, "layers": reading_layers}
    return data, 200


async def _search(request: Request, q: str | None, model: str | None, fmt: str | None) -> Response:
    urls: Urls = request.app.state.urls
    data, status = await search_data(request, q, model)
    slug = data["model"]["slug"] if data["model"] else model
    headers = {"Retry-After": "5"} if status == 503 else {}
    response = respond(
        request,
        "search.html",
        data,
        fmt=fmt,
        json_url=urls.search(data["query"] or None, model, fmt="json"),
        html_url=urls.search(data["query"] or None, model),
        fragment="_partials/search_results.html",
        context={
            "title": f"“{data['query']}”" if data["query"] else "Search",
            "search_query": data["query"],
            "current_model": slug,
        },
        status_code=status,
    )
    response.headers.update(headers)
    response.headers["Vary"] = "HX-Request"
    return response


@router.get("/search")
async def search_page(request: Request, q: str | None = None, model: str | None = None) -> Response:
    """Neurons for a text query (zero-shot directions and reading neurons); htmx gets the results."""
    return await _search(request, q, model, None)


@router.get("/search.json")
async def search_json(request: Request, q: str | None = None, model: str | None = None) -> Response:
    """The JSON twin of ``/search``."""
    return await _search(request, q, model, "json")
