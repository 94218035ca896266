"""2-D layouts of a layer's neurons for the atlas view (numpy only).

Features: for a last block, each unit's direction in embedding space; for other layers, its
activation profile over the stored image sample (z-scored). Units are compared by cosine
similarity; the layout is a small exact t-SNE (PCA-initialised, so it is deterministic) for
layers up to :data:`TSNE_MAX_UNITS` units, and the first two principal components beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TSNE_MAX_UNITS = 1024
PCA_DIMS = 50


@dataclass(frozen=True)
class Layout:
    xy: np.ndarray  # (units, 2) in [0, 1]
    method: str  # "t-SNE" or "PCA"
    features: str  # "direction" or "activation profile"


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = u[:, :dims] * s[:dims]
    # deterministic signs: largest-magnitude coordinate of each component positive
    signs = np.sign(out[np.abs(out).argmax(0), np.arange(out.shape[1])])
    return out * np.where(signs == 0, 1, signs)


def _affinities(d2: np.ndarray, perplexity: float) -> np.ndarray:
    """Symmetric t-SNE input affinities from squared distances (binary search per point)."""
    n = d2.shape[0]
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        row = np.delete(d2[i], i)
        row = row - row.min()
        for _ in range(60):
            w = np.exp(-row * beta)
            total = w.sum() + 1e-12
            h = np.log(total) + beta * (row * w).sum() / total
            if abs(h - target) < 1e-4:
                break
            if h > target:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = w / total
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne(x: np.ndarray, perplexity: float = 20.0, iterations: int = 300) -> np.ndarray:
    """A small exact t-SNE of the rows of ``x`` (cosine geometry), PCA-initialised."""
    n = x.shape[0]
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d2 = np.maximum(2 - 2 * xn @ xn.T, 0)
    p = _affinities(d2, min(perplexity, max(2.0, (n - 1) / 3)))
    y = _pca(xn, 2)
    y = y / (np.std(y[:, 0]) + 1e-12) * 1e-2
    velocity = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        momentum = 0.5 if it < 100 else 0.8
        sq = (y * y).sum(1)
        num = 1.0 / (1.0 + sq[:, None] + sq[None, :] - 2 * y @ y.T)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        grad = 4 * ((np.diag(pq.sum(1)) - pq) @ y)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - 200.0 * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y


def _unit_square(xy: np.ndarray) -> np.ndarray:
    lo, hi = xy.min(0), xy.max(0)
    return (xy - lo) / np.where(hi - lo > 0, hi - lo, 1.0)


def layout(features: np.ndarray, kind: str) -> Layout:
    """Lay out the rows of ``features`` (one per unit) in the unit square."""
    x = np.asarray(features, np.float64)
    n = x.shape[0]
    if n == 0:
        return Layout(np.zeros((0, 2)), "none", kind)
    if n < 4:
        return Layout(_unit_square(np.c_[np.arange(n), np.zeros(n)]), "index", kind)
    if x.shape[1] > PCA_DIMS:
        x = _pca(x, PCA_DIMS)
    if n <= TSNE_MAX_UNITS:
        return Layout(_unit_square(tsne(x)), "t-SNE", kind)
    return Layout(_unit_square(_pca(x, 2)), "PCA", kind)


def activation_profiles(values: np.ndarray) -> np.ndarray:
    """``(units, images)`` z-scored activation profiles from a ``(images, units)`` sample."""
    v = np.asarray(values, np.float64)
    v = v - v.mean(0)
    v = v / np.maximum(v.std(0), 1e-12)
    return v.T
