"""Zero-shot neuron search by evidence (issue 16): a unit stands for a text query when it responds,
on its own scale, both to the pictures the model calls by that text and to the text written out.

For a query ``q`` and a layer with an activation sample and a concept vocabulary ``V`` (the
labels stage's concept profile):

* **picture d′**: the sample images the model itself calls ``q`` (zero-shot: the cosine of the
  image embedding with ``q``'s text embedding beats its cosine with every word of ``V`` other
  than ``q``) against the rest of the sample, as d′ of the unit's activations (mean difference
  in pooled standard deviations of the unit), the way ``eval-demo`` and the multimodal view
  compare pictures of a concept with pictures of other concepts;
* **word z**: the unit's mean response to ``q`` written as text (the labels stage's renderings:
  fonts, neutral inks) against its mean responses to the other words of ``V`` written the same
  way, in standard deviations over those words: does it read *this* word, not words in general;
* **evidence** = min(picture d′, word z): high only when both are high, the multimodality score
  of :mod:`app.neurons.multimodality` asked of an arbitrary text. Dead or near-constant units
  get none.

Without a vocabulary or with fewer than :data:`MIN_PICTURES` pictures on either side, there is
no evidence and search falls back to the direction score (direction · text embedding × std).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.neurons import multimodality as mm

MIN_PICTURES = 3
"""Pictures needed on each side (called ``q`` / not) for a picture d′."""
MIN_WORDS = 3
"""Other vocabulary words needed for a word z."""


def other_words(query: str, vocabulary: Sequence[str]) -> np.ndarray:
    """Boolean mask of the vocabulary words that are not the query itself (case-insensitive)."""
    q = " ".join(query.lower().split())
    return np.array([" ".join(w.lower().split()) != q for w in vocabulary], dtype=bool)


def called_by(query_emb: np.ndarray, vocab_emb: np.ndarray, image_emb: np.ndarray) -> np.ndarray:
    """Images whose cosine with the query beats their cosine with every vocabulary word
    (``vocab_emb``: the other words only). All embeddings L2-normalised."""
    to_query = image_emb @ query_emb
    if len(vocab_emb) == 0:
        return np.zeros(len(image_emb), dtype=bool)
    return to_query > (image_emb @ vocab_emb.T).max(1)


def picture_dprime(values: np.ndarray, positive: np.ndarray) -> np.ndarray | None:
    """d′ per unit of the ``positive`` sample rows against the others (``None``: too few)."""
    if positive.sum() < MIN_PICTURES or (~positive).sum() < MIN_PICTURES:
        return None
    return mm.dprime(values[positive], values[~positive])


def word_z(query_response: np.ndarray, other_word_values: np.ndarray) -> np.ndarray | None:
    """Per unit: (response to the written query − mean over the other words) / their std."""
    if len(other_word_values) < MIN_WORDS:
        return None
    std = other_word_values.std(0)
    z = (query_response - other_word_values.mean(0)) / np.maximum(std, mm.EPS)
    return z.astype(np.float32)


@dataclass
class Evidence:
    """One layer's evidence for a query: per-unit arrays (NaN: none) and how it was measured."""

    picture_d: np.ndarray
    word_z: np.ndarray
    score: np.ndarray  # min(picture_d, word_z), NaN for dead units
    n_pictures: int  # sample images the model calls the query
    n_images: int
    n_words: int  # other vocabulary words the written query is compared with


def evidence(
    values: np.ndarray,
    called: np.ndarray,
    query_response: np.ndarray,
    other_word_values: np.ndarray,
) -> Evidence | None:
    """The :class:`Evidence` of a layer (``None`` when either side cannot be measured)."""
    pd = picture_dprime(values, called)
    wz = word_z(query_response, other_word_values)
    if pd is None or wz is None:
        return None
    score = np.minimum(pd, wz).astype(np.float32)
    score[~mm.alive_units(values)] = np.nan
    return Evidence(pd, wz, score, int(called.sum()), len(values), len(other_word_values))


def rank_by_evidence(score: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` units of highest evidence (units without evidence last, stable by unit)."""
    key = np.where(np.isfinite(score), score, -np.inf)
    return np.argsort(-key, kind="stable")[:n]
