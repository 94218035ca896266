"""A value on its unit's own scale: percentile in the unit's dataset sample, and z-score.

The one definition used by every page (issue 16: values are read on the unit's own scale):

* :func:`percentile_of`: the **share of the sample strictly below** ``v``, in percent (0–100).
* :func:`z_of`: ``(v − mean) / std``; ``None`` when the std is missing, zero (a constant unit) or
  not finite, or ``v`` is not finite.
"""

from __future__ import annotations

import math

import numpy as np

MIN_STD = 1e-12
"""A std at or below this is a constant unit: it has no z-score."""


def percentile_of(sample: np.ndarray | None, v: float, *, is_sorted: bool = False) -> float | None:
    """Percent (0–100) of ``sample`` strictly below ``v``; ``None`` for a missing or empty sample.

    ``is_sorted``: ``sample`` is sorted ascending (a binary search instead of a scan)."""
    if sample is None or len(sample) == 0:
        return None
    if is_sorted:
        below = int(np.searchsorted(sample, v, side="left"))
    else:
        below = int(np.count_nonzero(np.asarray(sample) < v))
    return below / len(sample) * 100.0


def z_of(v: float, mean: float | None, std: float | None) -> float | None:
    """``(v − mean) / std``; ``None`` without a mean or a usable std, or for a non-finite ``v``."""
    if mean is None or std is None:
        return None
    v, mean, std = float(v), float(mean), float(std)
    if not std > MIN_STD or not math.isfinite(std) or not math.isfinite(v) or not math.isfinite(mean):
        return None
    return (v - mean) / std


def layer_scales(
    sample: np.ndarray, means: np.ndarray, stds: np.ndarray, values: np.ndarray
) -> tuple[list[float | None], list[float | None]]:
    """Percentile and z-score of every unit of a layer for one image's ``values`` (vectorised).

    ``sample``: the layer's dataset sample (images × units, float16 or exactly convertible);
    ``means``/``stds``: per unit. The figures equal those of :func:`percentile_of` on the value in
    float16 precision and of :func:`z_of` rounded to 3 decimals, unit by unit (NaN: percentile
    ``None``; a constant unit: z ``None``).
    """
    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    with np.errstate(over="ignore"):  # beyond float16: inf, as np.float16(value)
        v16 = np.where(finite, v.astype(np.float16).astype(np.float32), v)
    below = np.count_nonzero(sample < v16[None, :], axis=0)
    pct = (below.astype(np.float64) / sample.shape[0] * 100.0).tolist()
    nan = np.isnan(v).tolist()
    percentiles: list[float | None] = [None if n else p for p, n in zip(pct, nan, strict=True)]
    v64 = v.astype(np.float64)
    with np.errstate(all="ignore"):
        z = (v64 - means) / stds
    usable = (stds > MIN_STD) & np.isfinite(stds) & np.isfinite(means) & np.isfinite(v64)
    # Python's round (as the one-unit figure), not np.round, which can differ in the last digit
    zs: list[float | None] = [
        round(x, 3) if ok else None for x, ok in zip(z.tolist(), usable.tolist(), strict=True)
    ]
    return percentiles, zs
