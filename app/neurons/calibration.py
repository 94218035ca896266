"""Search that knows when it does not know (issue 16): scores calibrated against a null.

The null is a fixed list of ordinary words nobody searched for (:func:`null_words`: BPE whole
words of frequency ranks 10,000–30,000, every ``k``-th, the demo's concept words removed).

* **Zero-shot neuron search**: a unit's direction score for a text (direction · text embedding ×
  the unit's std) is standardised against the same score for the null words: ``z = (score − mean
  null) / std null`` (shown with every unit; a unit whose direction is long scores high for every
  text, ``z`` asks whether it scores high for *this* text). The query's **confidence** is the
  share of null words whose own best z is below the query's best z (:data:`CONFIDENT`: 0.99). Units are
  ranked by evidence (:mod:`app.neurons.concept_search`), else by the direction score.
* **Recipes**: the fit of the query is compared with the fits of the null words; a fit no
  better than the null's 95th percentile is refused (:func:`recipe_refused`). The query is not
  centred: centring on the mean of the label vocabulary took from the vocabulary's own words
  what they share, so on the demo index 7 of 14 concept words were refused while "xqzvbl" fitted
  (0.91 against red's 0.89); uncentred, 12 of 14 concept words fit better than the null and 7 of
  8 nonsense strings do not.
* **Phrases**: the null of a phrase keeps its frame, every word but the last, and puts each
  null word in the last place (:func:`null_frame`): "a photo of a dog" is compared with "a photo of
  a kettle", "a photo of a sprint"…, not with bare words (a frame the model knows, "a photo of a",
  scores high whatever follows it; against bare words "a photo of a dog" looked confident).
* **Out of vocabulary**: a query word the tokenizer splits into several pieces ("xqzvbl") is not
  a word the text tower has seen as such; the page says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

N_NULL = 256
CONFIDENT = 0.99
"""A query is confident when its best z beats this share of the null words. Measured on the demo
index: every concept word 1.00; "redd" 0.97, "zzzz" 0.98, "the" 0.67, "bicycle" 0.38 (with the
best raw score instead, as before, "circle" 0.88 and "cross" 0.94 were flagged as doubtful). Phrases
against their framed null: "a photo of a red star" and "the word blue" 1.00, "a photo of a dog" 0.57,
"a photo of a cat" 0.23, "an apple" 0.27 (each 1.00 against bare words)."""


def null_words(n: int = N_NULL, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` ordinary words, spread over BPE frequency ranks 10,000–30,000 (deterministic)."""
    from app.neurons.vocabulary import bpe_words

    pool = bpe_words(30_000, start=10_000)
    skip = {w.lower() for w in exclude}
    pool = [w for w in pool if w.lower() not in skip]
    step = max(1, len(pool) // n)
    return pool[::step][:n]


def null_frame(text: str) -> str | None:
    """The frame of a phrase for its null: every word but the last ("a photo of a dog" → "a photo
    of a"); ``None`` for a single word (its null is the bare null words)."""
    words = text.split()
    return " ".join(words[:-1]) if len(words) > 1 else None


def framed(frame: str | None, words: Sequence[str]) -> list[str]:
    """``words`` put in the last place of ``frame`` (unchanged without a frame)."""
    return [f"{frame} {w}" for w in words] if frame else list(words)


@dataclass
class NullModel:
    """Per-unit mean and std of the zero-shot score over the null words, and the null's best z."""

    mean: np.ndarray  # (units,)
    std: np.ndarray  # (units,)
    best_z: np.ndarray  # (null words,) each null word's best z

    def z(self, scores: np.ndarray) -> np.ndarray:
        return (scores - self.mean) / self.std

    def confidence(self, best_z: float) -> float:
        """Share of null words whose best z is below ``best_z``."""
        return float((self.best_z < best_z).mean()) if len(self.best_z) else float("nan")

    def query_confidence(self, scores: np.ndarray) -> float:
        """The confidence of a query whose scores over the layer's units are ``scores``."""
        return self.confidence(float(np.max(self.z(scores))))


def fit_null(null_scores: np.ndarray) -> NullModel:
    """The :class:`NullModel` of ``null_scores`` ``(null words, units)``."""
    mean = null_scores.mean(0)
    std = null_scores.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (null_scores - mean) / std
    return NullModel(mean.astype(np.float32), std.astype(np.float32), z.max(1).astype(np.float32))


def out_of_vocabulary(tokenizer: Any, text: str) -> list[str]:
    """The words of ``text`` that the BPE tokenizer splits into several pieces (unknown as words).

    Returns ``[]`` when the tokenizer is not open_clip's BPE tokenizer (nothing can be said)."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        return []
    unknown = []
    for word in text.split():
        letters = "".join(ch for ch in word if ch.isalpha())
        if len(letters) < 2:
            continue
        try:
            pieces = encode(letters.lower())
        except Exception:  # noqa: BLE001 - a tokenizer we do not know: say nothing
            return []
        if len(pieces) > 1:
            unknown.append(word)
    return unknown


def recipe_refused(cosine: float, null: dict[str, float]) -> bool:
    """A recipe is refused when its fit is no better than the null's 95th percentile."""
    return bool(null["n"]) and cosine <= null["p95"]


def recipe_null(fits: Sequence[float]) -> dict[str, float]:
    """Median and 95th percentile of the null words' recipe fits."""
    arr = np.asarray(list(fits), np.float64)
    if not arr.size:
        return {"median": float("nan"), "p95": float("nan"), "n": 0}
    return {"median": float(np.median(arr)), "p95": float(np.quantile(arr, 0.95)), "n": int(arr.size)}
