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
