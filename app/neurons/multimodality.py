"""Multimodality: does a neuron respond strongly to the same concept in pictures *and* in written words?

The **score** of a unit is ``max over concepts c of min(d′ pictures(c), d′ words(c))``, the way
``eval-demo`` counts a multimodal concept:

* ``d′ pictures(c)``: the unit's activations on pictures of ``c`` (images tagged ``c`` that carry
  no written word) against pictures of other concepts, in pooled standard deviations of the unit
  (so it is relative to the unit's own spread, not to its raw scale);
* ``d′ words(c)``: its responses to the word ``c`` rendered as text on a plain background (several
  fonts and neutral inks, never a concept colour) against the renderings of the other concept
  words.

A unit scores high only when it responds strongly to both the pictures and the word of the
*same* concept (that concept is stored with the score). Dead or near-constant units (sample
standard deviation below :data:`DEAD_FRACTION` of the layer's median) get no score.

The older score, the correlation across concepts of the unit's picture and word *preferences*
(:func:`preference_correlation`), is kept as a secondary figure: it is blind to size (a unit
whose response to the word "red" is below its own dataset mean could still correlate at 0.99).

Image tags: ``"red"`` for a picture of the concept, ``"red (text)"`` for its written word.
Demo images get tags from their ground truth (``images.meta``); other datasets from zero-shot
pseudo-labels (:func:`pseudo_label_tags`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from app.models import LayerInfo, LoadedModel

TEXT_SUFFIX = " (text)"
DRAWING_SUFFIX = " (drawing)"
MIN_IMAGES_PER_CONCEPT = 3
MIN_CONCEPTS = 4
TEMPERATURE = 0.5
DEAD_FRACTION = 0.2
"""A unit whose sample std is below this share of its layer's median std counts as dead (at 0.05,
units at 6-10 % of the median, whose top examples are noise, still ranked high in layer3.0 of the
demo; at 0.2 the last layer's ranking is unchanged)."""
EPS = 1e-6


def text_tag(concept: str) -> str:
    """The tag of an image showing ``concept`` as written text."""
    return f"{concept}{TEXT_SUFFIX}"


def drawing_tag(concept: str) -> str:
    """The tag of a demo outline drawing of ``concept`` (kept apart from its pictures)."""
    return f"{concept}{DRAWING_SUFFIX}"


def is_text_tag(tag: str) -> bool:
    return tag.endswith(TEXT_SUFFIX)


def demo_tags(meta: Mapping[str, Any], concepts: Sequence[str]) -> list[str]:
    """Concept tags of a demo-world image from its ground truth (``Sample.truth``)."""
    modality = meta.get("modality")
    known = set(concepts)
    tags: list[str] = []
    if modality in ("object", "labelled_object"):
        tags += [c for c in (meta.get("colour"), meta.get("shape")) if c in known]
    if modality == "drawing":  # a third modality (outline drawings), not a picture of the object
        tags += [drawing_tag(c) for c in (meta.get("colour"), meta.get("shape")) if c in known]
    if modality in ("text", "labelled_object") and meta.get("word"):
        tags += [text_tag(w) for w in str(meta["word"]).lower().split() if w in known]
    return tags


def pseudo_label_tags(
    probabilities: np.ndarray, concepts: Sequence[str], min_probability: float = 0.2
) -> list[list[str]]:
    """Zero-shot pseudo-labels: each image's most probable concept, if probable enough."""
    best = probabilities.argmax(1)
    return [[concepts[j]] if probabilities[i, j] >= min_probability else [] for i, j in enumerate(best)]


def concept_image_means(
    values: np.ndarray,
    tags: Sequence[Sequence[str]],
    concepts: Sequence[str],
    min_images: int = MIN_IMAGES_PER_CONCEPT,
) -> tuple[np.ndarray, list[int]]:
    """``(concepts, units)`` mean activation over pictures of each concept (no written words).

    ``values`` is ``(images, units)``; rows of concepts with fewer than ``min_images`` pictures
    are NaN. Returns the means and the picture count per concept.
    """
    index = {c: i for i, c in enumerate(concepts)}
    sums = np.zeros((len(concepts), values.shape[1]), np.float64)
    counts = np.zeros(len(concepts), np.int64)
    for row, image_tags in enumerate(tags):
        if any(is_text_tag(t) for t in image_tags):
            continue
        for t in image_tags:
            if t in index:
                sums[index[t]] += values[row]
                counts[index[t]] += 1
    means = np.full(sums.shape, np.nan, np.float32)
    ok = counts >= min_images
    means[ok] = (sums[ok] / counts[ok, None]).astype(np.float32)
    return means, counts.tolist()


def multimodality_scores(
    image_means: np.ndarray,
    word_values: np.ndarray,
    min_concepts: int = MIN_CONCEPTS,
    temperature: float | None = TEMPERATURE,
) -> np.ndarray:
    """Per unit: correlation across concepts of picture and word concept preferences.

    Concepts without picture means (NaN rows) are left out; with fewer than ``min_concepts``
    concepts left, or a unit constant on either side, the score is NaN. ``temperature=None``
    correlates the raw responses (plain Pearson).
    """
    ok = ~np.isnan(image_means).any(axis=1)
    units = image_means.shape[1]
    if ok.sum() < min_concepts:
        return np.full(units, np.nan, np.float32)
    x = _preference(image_means[ok].astype(np.float64), temperature)
    y = _preference(word_values[ok].astype(np.float64), temperature)
    return _pearson(x, y).astype(np.float32)


def _preference(values: np.ndarray, temperature: float | None) -> np.ndarray:
    """``exp(z / T)`` of the responses z-scored across concepts (rows), per unit (columns)."""
    if temperature is None:
        return values
    std = values.std(0)
    z = (values - values.mean(0)) / np.where(std > 1e-12, std, 1.0)
    out = np.exp(np.clip(z / temperature, -50, 50))
    out[:, std <= 1e-12] = 1.0  # constant unit: no preference (NaN score below)
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    y = y - y.mean(0)
    denom = np.sqrt((x * x).sum(0) * (y * y).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(0) / denom
    r[~(denom > 1e-12)] = np.nan
    return r


# --------------------------------------------------------------------------- the d′ score


def word_rendering_responses(
    loaded: LoadedModel,
    layers: Sequence[LayerInfo],
    words: Sequence[str],
    render: Callable[[str], Sequence[Image.Image]],
    batch: int = 64,
) -> dict[str, np.ndarray]:
    """``layer -> (words, renderings, units)``: each unit's spatial-max response to every rendering
    ``render(word)`` returns (every word must get the same number of renderings)."""
    from app.neurons.capture import layer_maps
    from app.neurons.zeroshot import preprocess_batch

    images: list[Image.Image] = []
    per_word = None
    for word in words:
        ims = list(render(word))
        if per_word is None:
            per_word = len(ims)
        if len(ims) != per_word or not ims:
            raise ValueError("every word needs the same, non-zero number of renderings")
        images += ims
    out: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = preprocess_batch(loaded, images[start : start + batch])
            for name, m in layer_maps(loaded, x, layers).items():
                out[name].append(m.amax(dim=(2, 3)).float().cpu().numpy())
    r = per_word or 0
    return {name: np.concatenate(v).reshape(len(words), r, -1).astype(np.float32) for name, v in out.items()}


def dprime(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """d′ per column: (mean positive − mean negative) / pooled std (NaN when either side is empty)."""
    if len(positive) == 0 or len(negative) == 0:
        return np.full(positive.shape[1], np.nan, np.float32)
    pooled = np.sqrt(0.5 * (positive.var(0) + negative.var(0))) + EPS
    return ((positive.mean(0) - negative.mean(0)) / pooled).astype(np.float32)


def picture_dprimes(
    values: np.ndarray,
    tags: Sequence[Sequence[str]],
    concepts: Sequence[str],
    min_images: int = MIN_IMAGES_PER_CONCEPT,
) -> np.ndarray:
    """``(concepts, units)`` d′ of pictures of each concept (no written words) against pictures
    of the other concepts; NaN rows where a concept has fewer than ``min_images`` pictures."""
    known = set(concepts)
    pictures = [
        i for i, t in enumerate(tags) if any(x in known for x in t) and not any(is_text_tag(x) for x in t)
    ]
    out = np.full((len(concepts), values.shape[1]), np.nan, np.float32)
    if not pictures:
        return out
    v = values[pictures].astype(np.float32)
    for ci, c in enumerate(concepts):
        mask = np.array([c in tags[i] for i in pictures])
        if mask.sum() >= min_images and (~mask).sum() >= min_images:
            out[ci] = dprime(v[mask], v[~mask])
    return out


def word_dprimes(renderings: np.ndarray, groups: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """``(concepts, units)`` d′ of the renderings of each concept word against those of the
    other concept words of its group (``renderings`` is ``(concepts, renderings, units)``;
    ``groups``: lists of concept indices of the same kind, e.g. colours and shapes; default one
    group), the way ``eval-demo`` compares a colour word with the other colour words."""
    c = renderings.shape[0]
    groups = [list(range(c))] if groups is None else [list(g) for g in groups]
    out = np.full((c, renderings.shape[2]), np.nan, np.float32)
    for group in groups:
        for ci in group:
            others = [renderings[j] for j in group if j != ci]
            if others:
                out[ci] = dprime(renderings[ci], np.concatenate(others))
    return out


def alive_units(values: np.ndarray, fraction: float = DEAD_FRACTION) -> np.ndarray:
    """Units whose sample std reaches ``fraction`` of the layer's median std (and is non-zero)."""
    std = values.astype(np.float32).std(0)
    median = float(np.median(std)) if std.size else 0.0
    return (std > EPS) & (std >= fraction * median)


def multimodal_dprime_scores(
    picture_d: np.ndarray, word_d: np.ndarray, alive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: ``max_c min(d′ pictures, d′ words)`` and the index of that concept (-1: none).

    Concepts without a picture d′ are skipped; dead units (``~alive``) and units without any
    concept get NaN."""
    both = np.minimum(picture_d, word_d)
    both = np.where(np.isfinite(both), both, -np.inf)
    best = both.argmax(0)
    score = both[best, np.arange(both.shape[1])].astype(np.float32)
    ok = np.isfinite(score) & alive
    score[~ok] = np.nan
    best = np.where(ok, best, -1)
    return score, best


def preference_correlation(
    image_means: np.ndarray, word_values: np.ndarray, min_concepts: int = MIN_CONCEPTS
) -> np.ndarray:
    """The secondary figure: correlation across concepts of picture and word preferences."""
    return multimodality_scores(image_means, word_values, min_concepts)
