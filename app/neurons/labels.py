"""Automatic neuron labels, CLIP-Dissect style.

A neuron's top dataset examples are embedded with the image tower and averaged; the label is
the vocabulary concept whose text embedding best matches that average. Two corrections make
the comparison meaningful:

* the dataset's mean image embedding is subtracted from the neuron's mean, so what is compared
  is what *distinguishes* the neuron's top examples from an average image (without it every
  neuron gets the same "generic" label);
* the concept embeddings are centred on the vocabulary mean, for the same reason on the text
  side (the modality gap: all text embeddings share a large common component).

The **score** is the cosine similarity of these two centred vectors, in [-1, 1]: 0 means the
concept is unrelated to what sets the neuron's top examples apart, values above ~0.3 are a
clear match. It is comparable across neurons and vocabularies. Each label also carries its
z-score among the vocabulary (how far it stands out from the other concepts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

VOCAB_PACKAGE = "app.neurons.vocab"
DEFAULT_VOCAB = "concepts.txt"
AUTO_SOURCE = "auto"
MANUAL_SOURCE = "manual"
IMPORTED_PREFIX = "imported:"


@dataclass(frozen=True)
class ConceptScore:
    """One candidate label of a neuron."""

    concept: str
    score: float  # centred cosine similarity, see module docstring
    zscore: float  # standing among the vocabulary


def read_vocabulary(path: str | Path | None = None) -> list[str]:
    """Concepts from ``path`` (one per line, ``#`` comments), or the bundled general vocabulary.

    Duplicates are dropped (first occurrence wins); an empty vocabulary is an error.
    """
    if path is None:
        text = resources.files(VOCAB_PACKAGE).joinpath(DEFAULT_VOCAB).read_text(encoding="utf-8")
        where = f"bundled {DEFAULT_VOCAB}"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    concepts: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        concept = line.strip()
        if concept and not concept.startswith("#") and concept.lower() not in seen:
            seen.add(concept.lower())
            concepts.append(concept)
    if not concepts:
        raise ValueError(f"vocabulary {where} has no concepts")
    return concepts


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_top_embeddings(top_rows: Sequence[Sequence[int]], image_emb: np.ndarray) -> np.ndarray:
    """``(neurons, D)`` mean embedding of each neuron's top examples (row indices into ``image_emb``).

    A neuron without examples gets a zero row.
    """
    out = np.zeros((len(top_rows), image_emb.shape[1]), np.float32)
    for i, rows in enumerate(top_rows):
        if len(rows):
            out[i] = image_emb[np.asarray(rows, dtype=np.int64)].mean(0)
    return out


def concept_scores(neuron_emb: np.ndarray, dataset_mean: np.ndarray, concept_emb: np.ndarray) -> np.ndarray:
    """``(neurons, concepts)`` centred cosine similarities (see module docstring)."""
    present = np.linalg.norm(neuron_emb, axis=1) > 0
    v = _normalise(neuron_emb - dataset_mean[None, :])
    t = _normalise(concept_emb - concept_emb.mean(0, keepdims=True))
    scores = v @ t.T
    scores[~present] = 0.0
    return scores.astype(np.float32)


def best_concepts(scores: np.ndarray, concepts: Sequence[str], k: int = 3) -> list[list[ConceptScore]]:
    """The ``k`` best concepts of each neuron, best first, with score and vocabulary z-score."""
    mean = scores.mean(1, keepdims=True)
    std = scores.std(1, keepdims=True) + 1e-6
    z = (scores - mean) / std
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1)[:, :k]
    return [
        [ConceptScore(concepts[j], float(scores[i, j]), float(z[i, j])) for j in order[i]]
        for i in range(scores.shape[0])
    ]


# ------------------------------------------------------------------------- label evidence (issue 16)

BACKED_AUC = 0.75
"""A label is *backed* (may be a unit's title) when its held-out AUC reaches this ..."""
BACKED_PRECISION = 0.5
"""... and at least this share of the unit's top-20 held-out images show the label's concept (of
the top ``n₊`` when fewer than 20 images show it; AUC alone can be high for a unit whose strongest
responses are to something else)."""
TOP_PRECISION = 20
HIST_BINS = 12


@dataclass(frozen=True)
class Evidence:
    """How well a neuron's activation picks out images of a label's concept (held-out images)."""

    auc: float | None
    p_value: float | None
    precision: float | None  # share of the concept among the neuron's top-20 held-out images
    n_images: int
    n_positive: int
    histogram: dict[str, list[float]]

    @property
    def backed(self) -> bool:
        return is_backed(self.auc, self.precision, self.n_positive)


def is_backed(auc: float | None, precision: float | None, n_positive: int | None = None) -> bool:
    """Whether held-out evidence lets a label be a unit's title (:data:`BACKED_AUC`,
    :data:`BACKED_PRECISION` of what the top 20 can hold: ``min(20, n_positive)`` images)."""
    if auc is None or auc < BACKED_AUC or precision is None:
        return False
    reachable = min(TOP_PRECISION, n_positive) / TOP_PRECISION if n_positive is not None else 1.0
    return precision * TOP_PRECISION >= BACKED_PRECISION * reachable * TOP_PRECISION - 1e-9


def held_out(image_ids: Sequence[int]) -> np.ndarray:
    """Deterministic half split of the sample: ``True`` for held-out images (evidence), ``False``
    for the half that chooses automatic labels. A fixed hash of the image id, so the split is the
    same in every run and for every layer."""
    ids = np.asarray(image_ids, dtype=np.uint64)
    mixed = (ids * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (mixed & np.uint64(1)).astype(bool)


def evidence(values: np.ndarray, positive: np.ndarray, top: int = TOP_PRECISION) -> Evidence:
    """The evidence of one unit (``values``: its activations on the held-out images) for one
    concept (``positive``: which of those images show it)."""
    from scipy.stats import mannwhitneyu

    values = np.asarray(values, np.float64)
    positive = np.asarray(positive, bool)
    n, n_pos = len(values), int(positive.sum())
    if n_pos == 0 or n_pos == n:
        return Evidence(None, None, None, n, n_pos, {})
    a, b = values[positive], values[~positive]
    test = mannwhitneyu(a, b, alternative="greater")
    auc = float(test.statistic) / (len(a) * len(b))
    order = np.argsort(-values, kind="stable")[: min(top, n)]
    precision = float(positive[order].mean())
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    hist = {
        "edges": [round(float(e), 4) for e in edges],
        "positive": [round(float(x), 4) for x in np.histogram(a, edges)[0] / len(a)],
        "negative": [round(float(x), 4) for x in np.histogram(b, edges)[0] / len(b)],
    }
    return Evidence(round(auc, 4), float(test.pvalue), round(precision, 4), n, n_pos, hist)


def tag_positives(tags: Sequence[Sequence[str]], concepts: Sequence[str]) -> np.ndarray:
    """``(concepts, images)``: which images carry each concept tag (case-insensitive)."""
    index = {c.lower(): i for i, c in enumerate(concepts)}
    out = np.zeros((len(concepts), len(tags)), bool)
    for row, image_tags in enumerate(tags):
        for t in image_tags:
            i = index.get(t.lower())
            if i is not None:
                out[i, row] = True
    return out


OUTSIDE, NEGATIVE, POSITIVE = -1, 0, 1


def comparison_pools(
    tags: Sequence[Sequence[str]],
    candidates: Sequence[str],
    kinds: Sequence[Sequence[str]] | None = None,
    min_images: int = 3,
) -> np.ndarray:
    """``(candidates, images)`` int8: :data:`POSITIVE` for an image of the candidate,
    :data:`NEGATIVE` for an image it is compared with, :data:`OUTSIDE` for the others.

    A picture tag (``"red"``) is compared among plain pictures (images with a picture tag and no
    written word), a text tag (``"red (text)"``) among images of written words only (no pictured
    object), so neither is confounded by the other (a red circle with the word "blue" on it is
    neither a picture of red nor the word blue). With ``kinds`` (lists of concepts of one kind,
    e.g. colours and shapes), the negatives are images of another concept of the same kind: the
    word "red" against other colour words, not against the word "circle" (when the sample has
    ``min_images`` on each side; else against every image of the modality)."""
    from app.neurons.multimodality import TEXT_SUFFIX, is_text_tag

    def concept(tag: str) -> str:
        return tag[: -len(TEXT_SUFFIX)] if is_text_tag(tag) else tag

    kind_of = {c.lower(): k for k, group in enumerate(kinds or []) for c in group}
    known = {c.lower() for c in candidates}
    n = len(tags)
    picture = np.zeros(n, bool)
    text = np.zeros(n, bool)
    # image -> kinds it shows (pictures) / reads (text)
    shows: list[set[int | None]] = [set() for _ in range(n)]
    reads: list[set[int | None]] = [set() for _ in range(n)]
    for row, image_tags in enumerate(tags):
        for t in image_tags:
            if t.lower() not in known:
                continue
            kind = kind_of.get(concept(t).lower())
            if is_text_tag(t):
                text[row] = True
                reads[row].add(kind)
            else:
                picture[row] = True
                shows[row].add(kind)
    plain_picture, plain_text = picture & ~text, text & ~picture
    positives = tag_positives(tags, candidates)
    out = np.full((len(candidates), n), OUTSIDE, np.int8)
    for j, c in enumerate(candidates):
        written = is_text_tag(c)
        pool = plain_text if written else plain_picture
        kind = kind_of.get(concept(c).lower())
        if kind is not None:
            of_kind = pool & np.array([kind in (reads[i] if written else shows[i]) for i in range(n)], bool)
            if min((of_kind & positives[j]).sum(), (of_kind & ~positives[j]).sum()) >= min_images:
                pool = of_kind  # else (a small sample) against every image of the modality
        out[j, pool] = NEGATIVE
        out[j, pool & positives[j]] = POSITIVE
    return out


def modality_dprimes(
    values: np.ndarray,
    tags: Sequence[Sequence[str]],
    candidates: Sequence[str],
    kinds: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """``(candidates, units)`` d′ of each candidate tag against the images it is compared with
    (:func:`comparison_pools`: pictures against other plain pictures, written words against other
    written words, of the same kind when ``kinds`` are given). NaN where a side has fewer than 3
    images."""
    from app.neurons.multimodality import dprime

    pools = comparison_pools(tags, candidates, kinds)
    out = np.full((len(candidates), values.shape[1]), np.nan, np.float32)
    for j in range(len(candidates)):
        pos, neg = pools[j] == POSITIVE, pools[j] == NEGATIVE
        if pos.sum() >= 3 and neg.sum() >= 3:
            out[j] = dprime(values[pos], values[neg])
    return out


def pooled_evidence(values: np.ndarray, pool: np.ndarray, top: int = TOP_PRECISION) -> Evidence:
    """:func:`evidence` of one unit (``values`` on the held-out images) for one candidate within its
    comparison pool (a row of :func:`comparison_pools`; a boolean row counts every image)."""
    pool = np.asarray(pool)
    if pool.dtype == bool:
        return evidence(values, pool, top)
    keep = pool != OUTSIDE
    return evidence(np.asarray(values)[keep], pool[keep] == POSITIVE, top)
