"""Multimodality: does a neuron respond to the same concept in pictures and in written words?

Per neuron, across concepts ``c``: ``x_c`` = its mean response to *pictures* of ``c`` (images
tagged ``c`` that carry no written word), ``y_c`` = its response to the word ``c`` rendered as
an image of text. The multimodality score is the correlation across concepts of the neuron's
*concept preferences* in the two modalities (in [-1, 1]): each side is z-scored across concepts
and passed through ``exp(z / T)`` (a softmax up to scale, ``T`` = :data:`TEMPERATURE`), then the
two are Pearson-correlated. A neuron that fires for red things *and* for the word "red", but
not for green things or the word "green", scores near 1.

Why the preference transform: plain Pearson correlation of the raw responses (``T → ∞``, pass
``temperature=None``) is dominated by broad trends (e.g. a yellow neuron that also likes green
pictures but not the word "green"), so on the demo model it ranks the neurons ``eval-demo``
names as multimodal only around the top 10–20 %; comparing which concepts each modality
*prefers* puts them in the top decile (see ``tests/test_meaning.py``).

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
MIN_IMAGES_PER_CONCEPT = 3
MIN_CONCEPTS = 4
TEMPERATURE = 0.5


def text_tag(concept: str) -> str:
    """The tag of an image showing ``concept`` as written text."""
    return f"{concept}{TEXT_SUFFIX}"


def is_text_tag(tag: str) -> bool:
    return tag.endswith(TEXT_SUFFIX)


def demo_tags(meta: Mapping[str, Any], concepts: Sequence[str]) -> list[str]:
    """Concept tags of a demo-world image from its ground truth (``Sample.truth``)."""
    modality = meta.get("modality")
    known = set(concepts)
    tags: list[str] = []
    if modality in ("object", "drawing", "labelled_object"):
        tags += [c for c in (meta.get("colour"), meta.get("shape")) if c in known]
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


@torch.inference_mode()
def word_responses(
    loaded: LoadedModel,
    layers: Sequence[LayerInfo],
    words: Sequence[str],
    render: Callable[[str], Sequence[Image.Image]],
    batch: int = 64,
) -> dict[str, np.ndarray]:
    """``layer -> (words, units)``: each unit's spatial-max response to ``word`` written as text,
    averaged over the renderings ``render(word)`` returns (fonts, inks, backgrounds)."""
    from app.neurons.capture import layer_maps
    from app.neurons.zeroshot import preprocess_batch

    images: list[Image.Image] = []
    owner: list[int] = []
    for i, word in enumerate(words):
        for im in render(word):
            images.append(im)
            owner.append(i)
    sums = {layer.name: np.zeros((len(words), layer.n_units), np.float64) for layer in layers}
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(words)).astype(np.float64)
    for start in range(0, len(images), batch):
        x = preprocess_batch(loaded, images[start : start + batch])
        maps = layer_maps(loaded, x, layers)
        rows = np.asarray(owner[start : start + batch])
        for name, m in maps.items():
            peak = m.amax(dim=(2, 3)).float().cpu().numpy()
            np.add.at(sums[name], rows, peak)
    return {name: (s / np.maximum(counts, 1)[:, None]).astype(np.float32) for name, s in sums.items()}


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
