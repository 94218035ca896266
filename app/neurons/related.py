"""Related neurons: the units of the same layer most similar to a given one.

* Last block: cosine similarity of the units' directions in embedding space (table
  ``directions``): two units are related when they push the image embedding the same way.
* Other layers: Pearson correlation of the units' activations over the stored random sample
  (table ``activation_samples``).

Pure maths over arrays; reading the directions and samples from the index is
:mod:`app.db.related`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECTION = "direction"
CORRELATION = "correlation"


@dataclass(frozen=True)
class RelatedUnit:
    unit: int
    similarity: float
    method: str  # "direction" (cosine) or "correlation" (Pearson)


def most_similar_directions(directions: np.ndarray, unit: int, k: int = 8) -> list[RelatedUnit]:
    """The ``k`` units whose directions have the highest cosine with ``unit``'s."""
    norms = np.linalg.norm(directions, axis=1)
    cos = directions @ directions[unit] / np.maximum(norms * norms[unit], 1e-12)
    return _best(cos, unit, k, DIRECTION)


def most_correlated(values: np.ndarray, unit: int, k: int = 8) -> list[RelatedUnit]:
    """The ``k`` units whose sampled activations correlate most with ``unit``'s."""
    x = values.astype(np.float64)
    x = x - x.mean(0)
    norms = np.sqrt((x * x).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = x.T @ x[:, unit] / (norms * norms[unit])
    r[~np.isfinite(r)] = np.nan
    return _best(r, unit, k, CORRELATION)


def _best(similarity: np.ndarray, unit: int, k: int, method: str) -> list[RelatedUnit]:
    sim = np.where(np.isfinite(similarity), similarity, -np.inf)
    sim[unit] = -np.inf
    order = np.argsort(-sim, kind="stable")[:k]
    return [RelatedUnit(int(u), float(sim[u]), method) for u in order if np.isfinite(sim[u])]


def _top_k_rows(sim: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each row of a square similarity matrix: the ``k`` best other columns (finite only)."""
    sim = np.where(np.isfinite(sim), sim, -np.inf)
    np.fill_diagonal(sim, -np.inf)
    k = min(k, max(sim.shape[1] - 1, 0))
    if k <= 0:
        return [[] for _ in range(sim.shape[0])]
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    out = []
    for row, cols in enumerate(part):
        vals = sim[row, cols]
        order = np.lexsort((cols, -vals))
        out.append([(int(cols[i]), float(vals[i])) for i in order if np.isfinite(vals[i])])
    return out


def all_related_by_direction(directions: np.ndarray, k: int = 16) -> list[list[tuple[int, float]]]:
    """Every unit's ``k`` most similar units by direction cosine (as :func:`most_similar_directions`)."""
    d = np.asarray(directions, np.float32)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return _top_k_rows(d @ d.T, k)


def all_related_by_correlation(values: np.ndarray, k: int = 16) -> list[list[tuple[int, float]]]:
    """Every unit's ``k`` most correlated units over the sample (as :func:`most_correlated`)."""
    x = np.asarray(values, np.float64)
    x = (x - x.mean(0)).astype(np.float32)
    norms = np.sqrt((x * x).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x.T @ x) / np.outer(norms, norms)
    return _top_k_rows(r, k)
