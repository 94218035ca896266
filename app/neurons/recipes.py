"""Concept recipes: a text embedding written as a sparse non-negative mix of neuron directions.

The Distill article found "piggy bank ≈ 2.5 × finance + 1.1 × dolls + ...". Here the query's
text embedding ``q`` is approximated by ``Σ w_i d_i`` over the last block's unit directions
``d_i`` (table ``directions``), with ``w_i ≥ 0`` and at most ``max_terms`` non-zero weights:
greedy non-negative matching pursuit (add the unit most aligned with the residual) with an exact
non-negative least-squares refit (Lawson–Hanson) after every step.

Both the query and the directions are L2-normalised, so a weight reads "how much of this unit's
direction"; the fit's quality is the cosine between ``q`` and the reconstruction.

Optionally the query is first *centred*: the mean embedding of a reference vocabulary is
subtracted, removing what all texts share (the image and text embeddings of CLIP models sit in
different cones, so an uncentred text embedding is dominated by that common part). The search
page does not centre: its null (:mod:`app.neurons.calibration`) already compares a query with
ordinary words, and centring on the label vocabulary took from the vocabulary's own words what
they share (on the demo, 7 of 14 concept words fitted no better than the null, "xqzvbl" did).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TERMS = 6


@dataclass(frozen=True)
class RecipeTerm:
    unit: int
    weight: float  # non-negative, for unit-norm direction and query
    cosine: float  # cosine between the unit's direction and the (centred) query


@dataclass(frozen=True)
class Recipe:
    terms: list[RecipeTerm]  # by decreasing weight
    cosine: float  # cosine(query, reconstruction)
    centred: bool


def nnls(a: np.ndarray, b: np.ndarray, tol: float = 1e-10, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares ``argmin_{x ≥ 0} |a x - b|`` (Lawson–Hanson active set)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    max_iter = max_iter or 3 * n + 10
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= tol:
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if s[passive].min() > tol:
                break
            bad = passive & (s <= tol)
            alpha = np.min(x[bad] / np.maximum(x[bad] - s[bad], 1e-300))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                s = np.zeros(n)
                break
        x = s
        w = a.T @ (b - a @ x)
    return x


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def fit_recipe(
    query: np.ndarray,
    directions: np.ndarray,
    *,
    max_terms: int = DEFAULT_TERMS,
    centre: np.ndarray | None = None,
) -> Recipe:
    """The sparse non-negative recipe of ``query`` (``(D,)``) over ``directions`` (``(units, D)``).

    ``centre`` (e.g. the mean text embedding of a vocabulary) is subtracted from the query first.
    Stops early when no unit is aligned with the residual any more.
    """
    q = np.asarray(query, np.float64)
    if centre is not None:
        q = q - np.asarray(centre, np.float64)
    q = _unit(q)
    d = np.asarray(directions, np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    chosen: list[int] = []
    weights = np.zeros(0)
    residual = q.copy()
    for _ in range(max(0, max_terms)):
        scores = d @ residual
        scores[chosen] = -np.inf
        best = int(np.argmax(scores))
        if scores[best] <= 1e-9:
            break
        chosen.append(best)
        weights = nnls(d[chosen].T, q)
        keep = weights > 1e-9
        chosen = [u for u, k in zip(chosen, keep, strict=True) if k]
        weights = weights[keep]
        residual = q - weights @ d[chosen] if chosen else q.copy()
    fit = weights @ d[chosen] if chosen else np.zeros_like(q)
    fit_norm = float(np.linalg.norm(fit))
    cosine = float(fit @ q / fit_norm) if fit_norm > 0 else 0.0
    order = np.argsort(-weights)
    terms = [RecipeTerm(chosen[i], float(weights[i]), float(d[chosen[i]] @ q)) for i in order]
    return Recipe(terms, cosine, centre is not None)
