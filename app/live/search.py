"""The computation behind ``/search`` (the view only parses the request and presents).

Two live rankings, both through the live runner:

* **zero-shot neuron search**: last-block neurons ranked by **evidence** (issue 16,
  :mod:`app.neurons.concept_search`): min(picture d′, word z), i.e. the unit responds on its own
  scale both to the sample pictures the model calls by the query and to the query written out.
  Without that evidence (no concept profile: the labels stage has not run; too few pictures) the
  units are ranked by the **direction score**: the dot product of their direction in the joint
  embedding space (table ``directions``) with the query's unit-length text embedding, times the
  unit's std. Every unit carries both, and its z against null words (:mod:`app.neurons.calibration`);
* **reading neurons**: the query rendered as an image of text (:func:`app.neurons.render.render_text`)
  and the neurons that fire most on that image, with their dataset percentile.

Per-app caches (:class:`SearchCaches`) are handed in by the view: text embeddings and rendered
queries (LRU). What a search needs per model (stored directions and evidence, the sample's image
embeddings, the null) is prepared once per model and data, in the background, by
:mod:`app.live.search_prep` (started at server startup) and handed in as :class:`Prepared`.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.db import search as search_db
from app.db.search import LayerDirections, LayerEvidence
from app.live import analysis
from app.live.context import ModelContext
from app.live.runner import LiveRunner
from app.live.search_prep import Prepared
from app.lru import LRU
from app.neurons import activations as core
from app.neurons import concept_search as cs
from app.neurons.render import render_text

MAX_QUERY_CHARS = 500
N_ZERO_SHOT = 20
N_READING = 10
CACHE_SIZE = 512
FALLBACK_SUGGESTIONS = ("red", "a dog", "a face", "text", "water", "a star")

SCORE_HELP = (
    "Ranked by evidence = min(picture d′, word z) when the index has a concept vocabulary: picture "
    "d′ = how much higher the neuron's activation is on the sampled images the model itself calls "
    "by your query (zero-shot, the query against every other word of the index's vocabulary) than "
    "on the rest of the sample, in pooled standard deviations of the neuron; word z = the neuron's "
    "response to your query written as text against its responses to the vocabulary's other words "
    "written the same way, in standard deviations over those words. A neuron ranks high only when "
    "it responds to both, on its own scale. score = (the neuron's direction in the joint "
    "image–text embedding space · the query's unit-length text embedding) × the standard "
    "deviation of the neuron's value over the indexed dataset (the ranking when there is no "
    "evidence): how far a typical change of this neuron's activation moves the image embedding "
    "towards the query. raw = the dot product per unit of activation; cos = raw ÷ the direction's "
    "length."
)
CONFIDENCE_HELP = (
    "z = a neuron's zero-shot score in standard deviations of its own scores over 256 ordinary "
    "words (BPE words of frequency ranks 10,000–30,000, the null); confidence = the share of those "
    "null words whose best z over the layer's neurons is below this query's best z (a query is "
    "confident from 99 %). A phrase is compared with its own frame holding each null word in its "
    "last place (“a photo of a dog” with “a photo of a kettle”…), so a familiar frame alone does "
    "not make it confident."
)
READING_HELP = (
    "The query written as an image of text (dark on white, at the model's input size); value = the "
    "neuron's activation on that image (max over positions), percentile = within the neuron's "
    "dataset distribution."
)


# ------------------------------------------------------------------------------ the query


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


# ------------------------------------------------------------------------------ per-app caches


class SearchLRU(LRU):
    """Model outputs keyed by (model, text): :class:`app.lru.LRU` of :data:`CACHE_SIZE` entries."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        super().__init__(size)


@dataclass
class SearchCaches:
    """The search's per-app caches (the view keeps them with ``app_cache``)."""

    lru: LRU  # a SearchLRU


def suggestions(sessions: Callable[[], Any], ctx: ModelContext | None) -> list[str]:
    """Example queries: the best-scored labels of the model's last-block neurons, else generic ones."""
    if ctx is None:
        return list(FALLBACK_SUGGESTIONS)
    with sessions() as session:
        found = search_db.suggestions(session, [layer.id for layer in ctx.layers if layer.is_last])
    return found or list(FALLBACK_SUGGESTIONS)


def default_model(sessions: Callable[[], Any], runner: LiveRunner | None) -> str | None:
    if runner is not None:
        return runner.slug
    with sessions() as session:
        return search_db.first_model_slug(session)


def _png_data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


async def text_embedding(caches: SearchCaches, runner: LiveRunner, text: str) -> np.ndarray:
    key = ("text", runner.slug, text)
    cached = caches.lru.get(key)
    if cached is None:
        cached = (await runner.encode_texts([text]))[0]
        caches.lru.put(key, cached)
    return cached


async def reading_activations(
    caches: SearchCaches, runner: LiveRunner, text: str, select: Any = None
) -> tuple[Any, str]:
    """The runner's hits on ``text`` written as an image; ``select`` picks them from every unit
    (:func:`app.live.analysis.scale_selector`: the top on each unit's own scale)."""
    key = ("reading", runner.slug, text, select is not None)
    cached = caches.lru.get(key)
    if cached is None:
        image = await run_in_threadpool(render_text, text, runner.loaded.image_size)
        acts = await runner.analyze(image, top_k=N_READING, select=select)
        cached = (acts, await run_in_threadpool(_png_data_uri, image))
        caches.lru.put(key, cached)
    return cached


# ------------------------------------------------------------------------------ evidence inputs


def written_responses(loaded: Any, layer_names: Sequence[str], text: str) -> dict[str, np.ndarray]:
    """``layer -> (units,)``: each unit's mean response to ``text`` written as text, rendered by the
    labels stage's word renderer (the renderings its concept profile's ``word_values`` average)."""
    from app.neurons import multimodality as mm
    from precompute.labels import word_renderer

    infos = [loaded.layer(name) for name in layer_names]
    found = mm.word_rendering_responses(loaded, infos, [text], word_renderer(loaded.spec))
    return {name: r[0].mean(0) for name, r in found.items()}


def image_matrix(image_ids: Sequence[int], image_emb: dict[int, np.ndarray], dim: int) -> np.ndarray:
    """``(images, D)`` embeddings in sample order (zeros for an unreadable thumbnail)."""
    zero = np.zeros(dim, np.float32)
    return (
        np.stack([image_emb.get(i, zero) for i in image_ids]) if image_ids else np.zeros((0, dim), np.float32)
    )


# ------------------------------------------------------------------------------ the ranking


def rank_layer(
    name: str,
    layer: LayerDirections,
    embedding: np.ndarray,
    n: int,
    ev: cs.Evidence | None = None,
) -> dict[str, Any]:
    """One last-block layer's zero-shot results: the ``n`` units of highest evidence, else of
    highest direction score ((direction · embedding) × the unit's std)."""
    raw = layer.directions @ embedding
    scores = raw * layer.scale
    norms = np.linalg.norm(layer.directions, axis=1)
    if ev is not None:
        top = cs.rank_by_evidence(ev.score, n)
    else:
        top = np.argsort(-scores, kind="stable")[:n]

    def finite(x: float) -> float | None:
        return round(float(x), 4) if np.isfinite(x) else None

    neurons = []
    for u in top:
        item: dict[str, Any] = {
            "unit": int(u),
            "score": float(scores[u]),
            "raw": float(raw[u]),
            "cosine": float(raw[u] / norms[u]) if norms[u] > 0 else None,
            "std": float(layer.scale[u]),
        }
        if ev is not None:
            item.update(
                evidence=finite(ev.score[u]), picture_d=finite(ev.picture_d[u]), word_z=finite(ev.word_z[u])
            )
        neurons.append(item)
    out: dict[str, Any] = {
        "name": name,
        "ranking": "evidence" if ev is not None else "direction",
        "neurons": neurons,
    }
    if ev is not None:
        out["evidence"] = {"pictures": ev.n_pictures, "images": ev.n_images, "words": ev.n_words}
    return out


def layer_evidence(
    text: str,
    layer: LayerEvidence,
    embedding: np.ndarray,
    vocab_emb: np.ndarray,
    images: np.ndarray,
    response: np.ndarray,
) -> cs.Evidence | None:
    """The evidence of one layer for ``text`` (see :mod:`app.neurons.concept_search`)."""
    others = cs.other_words(text, layer.concepts)
    called = cs.called_by(embedding, vocab_emb[others], images)
    return cs.evidence(layer.values, called, response, layer.word_values[others])


async def zero_shot_units(
    runner: LiveRunner,
    prepared: Prepared,
    text: str,
    embedding: np.ndarray,
    null: QueryNull,
    n: int = N_ZERO_SHOT,
) -> list[dict[str, Any]]:
    """Per last-block layer: the zero-shot results (evidence when the index has it). For a phrase
    ("the word blue"), the pictures it calls are those closer to it than to the vocabulary put in
    the same frame ("the word red"…), and the written side is its last word, written alone like
    the vocabulary's words."""
    dirs = prepared.directions
    wanted = [name for name in dirs if name in prepared.layers]
    slot = null.slot(text)
    responses = await runner.submit(written_responses, wanted, slot) if wanted else {}

    def rank() -> list[dict[str, Any]]:
        layers = []
        for name, layer in dirs.items():
            ev = None
            if name in prepared.layers:
                le = prepared.layers[name]
                images = image_matrix(le.image_ids, prepared.image_emb, embedding.shape[0])
                ev = layer_evidence(slot, le, embedding, null.vocab_emb[name], images, responses[name])
            layers.append(rank_layer(name, layer, embedding, n, ev))
        return layers

    return await run_in_threadpool(rank)


@dataclass
class QueryNull:
    """The null a query is compared with: the null words alone for a single word, put in the
    phrase's frame for a phrase (:func:`app.neurons.calibration.null_frame`)."""

    frame: str | None
    units: dict[str, Any]  # layer -> NullModel of the zero-shot scores
    recipe: dict[str, float]  # the null words' recipe fits (median, p95, n)
    vocab_emb: dict[str, np.ndarray]  # layer -> its vocabulary put in the frame, encoded (evidence)

    def slot(self, text: str) -> str:
        """The word a phrase is about (its last word, the one the null words replace)."""
        return text.split()[-1] if self.frame else text


async def query_nulls(caches: SearchCaches, runner: LiveRunner, prepared: Prepared, text: str) -> QueryNull:
    """The :class:`QueryNull` of ``text``: prepared for single words; for a phrase, the null words
    put in its frame, encoded and fitted once per frame and cached."""
    from app.neurons.calibration import fit_null, framed, null_frame, null_words

    frame = null_frame(text)
    if frame is None:
        return QueryNull(None, prepared.nulls, prepared.recipe_null, prepared.vocab_emb)
    key = ("null", runner.slug, prepared.key, frame)
    cached = caches.lru.get(key)
    if cached is None:
        words = null_words()
        concepts = {name: list(layer.concepts) for name, layer in prepared.layers.items()}
        vocab = list(dict.fromkeys(c for cs_ in concepts.values() for c in cs_))
        emb = await runner.encode_texts(framed(frame, [*words, *vocab]))
        null_emb, vocab_at = emb[: len(words)], dict(zip(vocab, emb[len(words) :], strict=True))

        def fit() -> QueryNull:
            dirs = prepared.directions
            units = {name: fit_null((null_emb @ d.directions.T) * d.scale) for name, d in dirs.items()}
            vocab_emb = {name: np.stack([vocab_at[c] for c in cs_]) if cs_ else prepared.vocab_emb[name]
                         for name, cs_ in concepts.items()}  # fmt: skip
            return QueryNull(frame, units, recipe_null_of(prepared, null_emb), vocab_emb)

        cached = await run_in_threadpool(fit)
        caches.lru.put(key, cached)
    return cached


def recipe_null_of(prepared: Prepared, null_emb: np.ndarray) -> dict[str, float]:
    """The recipe fits of the null embeddings ``null_emb`` over the recipe's layer (median, p95, n)."""
    from app.neurons.calibration import recipe_null
    from app.neurons.recipes import fit_recipe

    if not prepared.directions:
        return recipe_null([])
    matrix = next(iter(prepared.directions.values())).directions
    return recipe_null([fit_recipe(e, matrix).cosine for e in null_emb])


@dataclass
class RecipeFit:
    """The query's recipe over the recipe's layer, its null and whether it is refused."""

    layer: str
    recipe: Any  # app.neurons.recipes.Recipe
    null: dict[str, float]
    refused: bool


def recipe_fit(prepared: Prepared, embedding: np.ndarray, null: dict[str, float]) -> RecipeFit | None:
    """The query's recipe over the first last-block layer (``None`` without directions); refused
    when its fit is no better than the null's 95th percentile."""
    from app.neurons.calibration import recipe_refused
    from app.neurons.recipes import fit_recipe

    if not prepared.directions:
        return None
    layer_name, layer = next(iter(prepared.directions.items()))
    recipe = fit_recipe(embedding, layer.directions)
    return RecipeFit(layer_name, recipe, null, recipe_refused(recipe.cosine, null))


def calibrate(
    runner: LiveRunner,
    prepared: Prepared,
    nulls: dict[str, Any],
    embedding: np.ndarray,
    zero_layers: list[dict[str, Any]],
    text: str,
) -> dict[str, Any]:
    """Issue 16: each zero-shot unit's z against the null words (``nulls``: :func:`query_nulls`),
    the query's confidence (share of null words whose best z is lower: a unit whose direction is
    long scores high for every text, so raw scores are not compared), out-of-vocabulary words;
    warnings say so."""
    from app.neurons.calibration import CONFIDENT, null_frame, out_of_vocabulary

    dirs = prepared.directions
    confidences = []
    for layer in zero_layers:
        null = nulls.get(layer["name"])
        if null is None:
            continue
        d = dirs[layer["name"]]
        layer["confidence"] = round(null.query_confidence((d.directions @ embedding) * d.scale), 4)
        confidences.append(layer["confidence"])
        for n in layer["neurons"]:
            n["z"] = round(float(null.z(np.float32(n["score"]))[n["unit"]]), 3)
    oov = out_of_vocabulary(runner.loaded.tokenizer, text)
    confidence = min(confidences) if confidences else None
    warnings = []
    if oov:
        warnings.append(
            "Not a word this model's tokenizer knows: "
            + ", ".join(f"“{w}”" for w in oov)
            + " is split into pieces, so the results below are about the pieces, not a concept."
        )
    frame = null_frame(text)
    if confidence is not None and confidence < CONFIDENT:
        against = f"“{frame} …” with ordinary words nobody asked for in its last place" if frame else (
            "ordinary words nobody asked for")
        warnings.append(
            f"Low confidence: the best neuron's z beats the best z of only {confidence:.0%} of "
            f"{against} (the null); these results may mean nothing."
        )
    return {"confidence": confidence, "out_of_vocabulary": oov, "null_frame": frame, "warnings": warnings}


def reading_ranking(
    ctx: ModelContext, acts: core.ImageActivations, moments: analysis.UnitMoments, sort: str
) -> list[dict[str, Any]]:
    """Issue 16: each layer's reading neurons on their own scale (percentile and z), the first
    :data:`N_READING` by ``sort`` (:data:`app.live.analysis.SORTS`; the runner picked the top of
    every unit by either, so both orders are exact)."""
    layers = []
    for layer in sorted(ctx.layers, key=lambda lr: -lr.position):
        neurons = [
            {
                "unit": hit.unit,
                "value": hit.value,
                "percentile": ctx.percentiles.of(layer.name, hit.unit, hit.value),
                "z": analysis.z_score(ctx, layer.name, hit.unit, hit.value, moments),
            }
            for hit in acts.top.get(layer.name, [])
        ]
        layers.append({"name": layer.name, "neurons": analysis.shown(neurons, sort, N_READING)})
    return layers


@dataclass
class Results:
    """What one search computed (the view adds URLs, cards and the recipe)."""

    query: Query
    embedding: np.ndarray
    directions: dict[str, LayerDirections]
    zero_shot: list[dict[str, Any]]
    reading: list[dict[str, Any]]
    image: str
    calibration: dict[str, Any]
    recipe: RecipeFit | None


async def search(
    caches: SearchCaches,
    runner: LiveRunner,
    ctx: ModelContext,
    prepared: Prepared,
    text: str,
    moments: analysis.UnitMoments,
    sort: str = analysis.DEFAULT_SORT,
) -> Results:
    """Run one search with the live model, given the model's :class:`Prepared` (see
    :mod:`app.live.search_prep`; raises :class:`app.live.runner.LiveError`); reading neurons in
    ``sort`` order (:data:`app.live.analysis.SORTS`)."""
    query = await run_in_threadpool(
        fit_to_context, runner.loaded.tokenizer, runner.loaded.context_length, text
    )
    embedding, (acts, image_uri) = await asyncio.gather(
        text_embedding(caches, runner, query.text),
        reading_activations(caches, runner, query.text, analysis.scale_selector(ctx, moments, N_READING)),
    )
    null = await query_nulls(caches, runner, prepared, query.text)
    zero_layers = await zero_shot_units(runner, prepared, query.text, embedding, null)
    calibration = calibrate(runner, prepared, null.units, embedding, zero_layers, query.text)
    recipe = await run_in_threadpool(recipe_fit, prepared, embedding, null.recipe)
    return Results(
        query,
        embedding,
        prepared.directions,
        zero_layers,
        reading_ranking(ctx, acts, moments, sort),
        image_uri,
        calibration,
        recipe,
    )
