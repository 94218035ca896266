"""Analysing an image with the live model: its view, its top neurons on their own scale, zero-shot.

The analysis pages (:mod:`app.web.views.analyze`, through :mod:`app.web.analyses`) and the
typographic lab's uploads compute here; storing is :mod:`app.db.analyses`, presenting is
:mod:`app.web.analyses`.

* :func:`prepare`: a decoded image → the JPEG of the view the model sees and its input tensor.
* :func:`run`: the runner's hits, chosen among **all** units of each layer on their own scale
  (:func:`scale_selector`: the top ``top_k`` by percentile and the top ``top_k`` by z-score),
  with heatmaps for those units only.
* :func:`build_result`: the stored form of an analysis, every unit ranked on its own scale
  (percentile in its dataset sample, then z-score: :mod:`app.neurons.scale`); it keeps the units
  shown by either sort (:data:`SORTS`), and ``top_k``, so a stored analysis re-ranked by
  ``?sort=`` shows the exact top ``top_k`` of the layer by that key.
* :func:`classify`: zero-shot class probabilities of a result's image embedding.
* :class:`UnitMoments`: per app (kept with ``app_cache``), the mean and std of every unit over
  the dataset sample of a model context, computed once.
"""

from __future__ import annotations

import io
import threading
import weakref
from typing import Any

import numpy as np
from PIL import Image as PILImage

from app.live.context import ModelContext, live_http_error
from app.live.runner import LiveError, LiveRunner
from app.neurons import activations as core
from app.neurons import zeroshot
from app.neurons.scale import layer_scales, z_of

RESULT_VERSION = 1
STORED_SIDE = 448  # longest side of the stored copy (the model's centre-square view)
STORED_QUALITY = 88
MAX_TOP_K = 64
SORTS = {
    "percentile": "percentile in the neuron's own dataset distribution (ties: z-score)",
    "z": "z-score on the neuron's own dataset distribution: (value − its mean) / its std",
}
DEFAULT_SORT = "percentile"


# ------------------------------------------------------------- every value on its unit's scale


class UnitMoments:
    """Mean and std of every unit of a layer over a model context's dataset sample, computed
    once per context (keyed weakly by its percentile tables). One per app (``app_cache``)."""

    def __init__(self) -> None:
        self._per_context: weakref.WeakKeyDictionary[Any, dict[str, tuple[np.ndarray, np.ndarray]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def of(self, ctx: ModelContext, layer: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(means, stds)`` of ``layer``'s units (``None`` without a sample)."""
        percentiles = ctx.percentiles
        if not percentiles.has(layer):
            return None
        with self._lock:
            per_layer = self._per_context.setdefault(percentiles, {})
            if layer not in per_layer:
                sample = percentiles.sorted[layer].astype(np.float64)
                per_layer[layer] = (sample.mean(0), sample.std(0))
            return per_layer[layer]


def z_score(ctx: ModelContext, layer: str, unit: int, value: float, moments: UnitMoments) -> float | None:
    """:func:`~app.neurons.scale.z_of` ``unit``'s ``value`` on its dataset sample (rounded to 3
    decimals); ``None`` without a sample or for a constant unit."""
    found = moments.of(ctx, layer)
    if found is None or not 0 <= unit < len(found[0]):
        return None
    z = z_of(value, float(found[0][unit]), float(found[1][unit]))
    return None if z is None else round(z, 3)


def rank_key(sort: str) -> Any:
    """Sort key (best first) of a shown neuron for ``sort`` (``percentile`` or ``z``): on the
    unit's own scale, never by raw value; ties broken by the other figure, then the unit."""

    def figure(x: Any) -> float:
        return float(x) if x is not None else -np.inf

    if sort == "z":
        return lambda n: (-figure(n.get("z")), -figure(n.get("percentile")), n["unit"])
    return lambda n: (-figure(n.get("percentile")), -figure(n.get("z")), n["unit"])


def scale_of(
    ctx: ModelContext, layer: str, values: np.ndarray, moments: UnitMoments
) -> tuple[list[float | None], list[float | None]] | None:
    """Percentile and z-score of every unit of ``layer`` for its value in ``values`` (one image's
    value of each unit), vectorised; ``None`` without a dataset sample of ``layer``.

    The figures equal, to the bit, those of ``ctx.percentiles.of`` and :func:`z_score` for one
    unit (percent strictly below the value in float16 precision; z rounded to 3 decimals), so a
    ranking of all units by them agrees with :func:`rank_key` on the stored neurons."""
    found = moments.of(ctx, layer)
    if found is None:
        return None
    sample = ctx.percentiles.sorted[layer]
    v = np.asarray(values, dtype=np.float32)
    if sample.shape[1] != v.shape[0]:
        return None  # a sample of another shape of layer: no scale for these values
    means, stds = found
    percentiles, zs = layer_scales(sample, means, stds, v)
    for unit in np.flatnonzero(~np.isfinite(v)):  # NaN, inf: the one-unit definition (a binary search)
        percentiles[unit] = ctx.percentiles.of(layer, int(unit), float(v[unit]))
    return percentiles, zs


def ranked(
    percentiles: list[float | None], zs: list[float | None], sort: str, units: list[int] | None = None
) -> np.ndarray:
    """Indices into the lists, best first by :func:`rank_key` of ``sort``: ``None`` last, ties
    broken by the other figure, then the unit (``units[i]``; the index itself when ``None``)."""

    def column(figures: list[float | None]) -> np.ndarray:
        return -np.array([-np.inf if f is None else f for f in figures], dtype=np.float64)

    pct, z = column(percentiles), column(zs)
    unit = np.arange(len(percentiles)) if units is None else np.asarray(units, dtype=np.int64)
    return np.lexsort((unit, pct, z)) if sort == "z" else np.lexsort((unit, z, pct))


def shown_by_any_sort(
    percentiles: list[float | None], zs: list[float | None], top_k: int, units: list[int] | None = None
) -> list[int]:
    """Indices of those among the ``top_k`` by some sort of :data:`SORTS` (at most
    ``len(SORTS)·top_k``), ordered by the default sort (its ``top_k`` first); see :func:`ranked`."""
    order = ranked(percentiles, zs, DEFAULT_SORT, units)
    chosen = set(order[:top_k].tolist())
    for sort in SORTS:
        chosen.update(ranked(percentiles, zs, sort, units)[:top_k].tolist())
    return [int(i) for i in order if i in chosen]


def scale_selector(ctx: ModelContext, moments: UnitMoments, top_k: int) -> core.Selector:
    """The runner's :data:`~app.neurons.activations.Selector` of an analysis: from every unit of
    a layer, those among the ``top_k`` on their own scale by percentile or by z-score
    (:func:`shown_by_any_sort`); a layer without a dataset sample has no scale: its ``top_k``
    by raw value."""

    def select(layer: str, values: np.ndarray) -> list[int]:
        figures = scale_of(ctx, layer, values, moments)
        if figures is None:
            return [int(u) for u in np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")[:top_k]]
        return shown_by_any_sort(*figures, top_k)

    return select


# ------------------------------------------------------------------------------ computing


def encode_view(view: Any) -> tuple[bytes, int, int]:
    """The stored copy of an upload: the model's view as JPEG (at most ``STORED_SIDE`` px)."""
    if max(view.size) > STORED_SIDE:
        view = view.copy()
        view.thumbnail((STORED_SIDE, STORED_SIDE), PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    view.convert("RGB").save(buffer, format="JPEG", quality=STORED_QUALITY)
    return buffer.getvalue(), view.width, view.height


def prepare(runner: LiveRunner, image: Any) -> tuple[tuple[bytes, int, int], Any]:
    """A decoded image → (JPEG of the view the model sees, the model's input tensor). Blocking.

    The stored copy is exactly the model's view (resize + centre crop), so heatmaps overlay it
    without any offset, like the dataset thumbnails."""
    view_of, to_tensor = core.split_preprocess(runner.loaded.preprocess)
    view = view_of(image)
    return encode_view(view), to_tensor(view)


async def run(
    runner: LiveRunner, ctx: ModelContext, tensor: Any, top_k: int, moments: UnitMoments
) -> core.ImageActivations:
    """The runner's hits of an input tensor: per layer the units among its ``top_k`` on their own
    scale, by percentile or by z-score, chosen from all its units (:func:`scale_selector`), with
    their heatmaps (runner errors → 503)."""
    try:
        return await runner.analyze(tensor, top_k=top_k, select=scale_selector(ctx, moments, top_k))
    except LiveError as exc:
        raise live_http_error(exc) from exc


def build_result(
    ctx: ModelContext,
    acts: core.ImageActivations,
    source: dict[str, Any],
    moments: UnitMoments,
    top_k: int | None = None,
) -> dict[str, Any]:
    """The stored form of an analysis (plain JSON): top neurons per layer with their heatmaps
    (the pages add each map's overlay), the image's ``source`` description and its embedding.

    The neurons kept are those of the runner's hits (all when ``top_k`` is ``None``) among the
    ``top_k`` on their own scale by some sort of :data:`SORTS` (percentile, then z; or z, then
    percentile: issue 16), listed by the default sort; ``top_k`` is kept with them, so the pages
    show the first ``top_k`` by the sort asked for (:func:`shown`). With the hits of :func:`run`
    (chosen from all units) those are the exact top ``top_k`` of the layer by either sort."""
    layers = []
    for layer in ctx.layers:
        hits = acts.top.get(layer.name, [])
        scored = [
            {
                "unit": hit.unit,
                "value": hit.value,
                "percentile": ctx.percentiles.of(layer.name, hit.unit, hit.value),
                "z": z_score(ctx, layer.name, hit.unit, hit.value, moments),
            }
            for hit in hits
        ]
        figures = ([n["percentile"] for n in scored], [n["z"] for n in scored], [n["unit"] for n in scored])
        if top_k is None:
            keep = [int(i) for i in ranked(figures[0], figures[1], DEFAULT_SORT, figures[2])]
        else:
            keep = shown_by_any_sort(figures[0], figures[1], top_k, figures[2])
        neurons = [
            {**scored[i], "heatmap": np.round(hits[i].heatmap.astype(np.float64), 5).tolist()} for i in keep
        ]
        layers.append({"name": layer.name, "neurons": neurons})
    embedding = acts.embedding.tolist() if acts.embedding is not None else None
    result = {"version": RESULT_VERSION, "source": source, "layers": layers, "embedding": embedding}
    if top_k is not None:
        result["top_k"] = top_k
    return result


def shown(neurons: list[dict[str, Any]], sort: str, top_k: int | None) -> list[dict[str, Any]]:
    """The neurons a page shows of a stored layer: ranked by ``sort`` (:func:`rank_key`), the
    first ``top_k`` (the stored result's; all for results stored without it)."""
    ordered = sorted(neurons, key=rank_key(sort))
    return ordered if top_k is None else ordered[:top_k]


async def classify(
    runner: LiveRunner | None, ctx: ModelContext, result: dict[str, Any], classes: list[str]
) -> dict[str, Any] | None:
    """Zero-shot probabilities of ``classes`` for a (stored) result's image embedding; needs the
    live model of ``ctx`` (else the answer says why there are none). ``None`` without classes."""
    if not classes:
        return None
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
