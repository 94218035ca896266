"""Conditional-probability plots, as in the Distill article: what a neuron's activations mean.

The activation of every image in the layer's stored random sample is put on an x-axis in
standard deviations from zero (value / standard deviation of the sample). The images are split
by concept: the ``top`` concept tags whose images activate the neuron most (on average), each
image going to the first of those it carries, the rest to "other". Each column of the plot is an
activation bin; its stacked bars give the share of each concept among the images in that bin,
i.e. P(concept | activation). A strip below shows how many images each bin holds, so thin
columns are seen as such. The geometry is computed here; the template draws inline SVG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
OTHER = "other"
OTHER_COLOUR = "#cfcfcf"
COLOUR_WORDS = {
    "red": "#d7262b", "orange": "#f5871a", "yellow": "#e8cf19", "green": "#23a037", "blue": "#234bdc",
    "purple": "#7d2daf", "pink": "#f57db9", "brown": "#78481e", "black": "#222222", "white": "#f4f4f4",
    "grey": "#8a8a8a", "gray": "#8a8a8a", "gold": "#d4af37", "silver": "#b8b8c0",
}  # fmt: skip
"""A category named after a colour is drawn in that colour (a "(text)" category in a lighter tint)."""


def category_colour(name: str, index: int) -> str:
    """The fill of category ``name`` (the ``index``-th shown)."""
    base, _, rest = name.partition(" (")
    hex_colour = COLOUR_WORDS.get(base.strip().lower())
    if hex_colour is None:
        return PALETTE[index % len(PALETTE)]
    if not rest:
        return hex_colour
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{(c + 255) // 2:02x}" for c in rgb)  # halfway to white


@dataclass
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class Category:
    name: str
    colour: str
    count: int
    mean_sigma: float  # mean activation of its images, in standard deviations from zero


@dataclass
class CondProbPlot:
    """Geometry of the plot in a ``width`` × ``height`` SVG box."""

    width: int
    height: int
    plot_top: float
    plot_bottom: float
    count_top: float
    count_bottom: float
    pad_left: float
    pad_right: float
    segments: list[Segment]
    count_bars: list[Segment]
    categories: list[Category]
    x_ticks: list[tuple[float, str]]
    zero_x: float | None
    n: int
    sigma: float
    edges: list[float] = field(default_factory=list)  # bin edges in σ
    shares: dict[str, list[float]] = field(default_factory=dict)  # category -> share per bin
    counts: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "n": self.n,
            "sigma": self.sigma,
            "edges_sigma": self.edges,
            "counts": self.counts,
            "categories": [
                {"name": c.name, "count": c.count, "mean_sigma": round(c.mean_sigma, 3)}
                for c in self.categories
            ],
            "shares": self.shares,
        }


def choose_categories(
    values: np.ndarray, tags: Sequence[Sequence[str]], top: int = 5, min_count: int = 5
) -> list[str]:
    """The ``top`` tags with the highest mean activation among tags with ``min_count`` images."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for v, image_tags in zip(values, tags, strict=True):
        for t in set(image_tags):
            sums[t] = sums.get(t, 0.0) + float(v)
            counts[t] = counts.get(t, 0) + 1
    floor = max(min_count, int(0.005 * len(values)))
    means = {t: sums[t] / counts[t] for t in sums if counts[t] >= floor}
    return sorted(means, key=lambda t: (-means[t], t))[:top]


def assign(tags: Sequence[Sequence[str]], categories: Sequence[str]) -> list[str]:
    """Each image's category: the first of ``categories`` among its tags, else ``other``."""
    order = {c: i for i, c in enumerate(categories)}
    out = []
    for image_tags in tags:
        ranked = sorted(order[t] for t in image_tags if t in order)
        out.append(categories[ranked[0]] if ranked else OTHER)
    return out


def condprob_plot(
    values: np.ndarray,
    tags: Sequence[Sequence[str]],
    *,
    top: int = 5,
    bins: int = 24,
    width: int = 560,
    height: int = 220,
) -> CondProbPlot | None:
    """The plot for one neuron (``values`` and ``tags`` aligned per sampled image)."""
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    values = values[keep]
    tags = [t for t, k in zip(tags, keep, strict=True) if k]
    if values.size < 2:
        return None
    sigma = float(np.std(values))
    if sigma <= 0:
        return None
    x = values / sigma
    categories = choose_categories(values, tags, top)
    if not categories:
        return None
    cat_of = assign(tags, categories)
    names = [*categories, OTHER]
    colours = {c: category_colour(c, i) for i, c in enumerate(categories)} | {OTHER: OTHER_COLOUR}
    lo, hi = float(np.floor(x.min() * 2) / 2), float(np.ceil(x.max() * 2) / 2)
    if hi <= lo:
        hi = lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    per = {c: np.zeros(bins, np.int64) for c in names}
    for b, c in zip(idx, cat_of, strict=True):
        per[c][b] += 1
    totals = sum(per.values())

    pad_left, pad_right, top_y = 36.0, 18.0, 6.0
    count_h, gap, axis_h = 32.0, 6.0, 22.0
    plot_bottom = height - axis_h - count_h - gap
    count_top, count_bottom = plot_bottom + gap, height - axis_h
    plot_w = width - pad_left - pad_right

    def sx(v: float) -> float:
        return pad_left + (v - lo) / (hi - lo) * plot_w

    segments: list[Segment] = []
    count_bars: list[Segment] = []
    peak = max(int(totals.max()), 1)
    for b in range(bins):
        total = int(totals[b])
        x0, x1 = sx(edges[b]), sx(edges[b + 1])
        w = max(x1 - x0 - 1, 0.5)
        span = f"{edges[b]:+.1f}σ … {edges[b + 1]:+.1f}σ"
        if total:
            y = top_y
            for c in names:
                k = int(per[c][b])
                if not k:
                    continue
                h = (plot_bottom - top_y) * k / total
                segments.append(Segment(round(x0, 2), round(y, 2), round(w, 2), round(h, 2), colours[c],
                                        f"{span}: {c} {k}/{total} ({k / total:.0%})"))  # fmt: skip
                y += h
            h = count_h * np.sqrt(total / peak)  # square root: thin bins stay visible
            count_bars.append(Segment(round(x0, 2), round(count_bottom - h, 2), round(w, 2), round(h, 2),
                                      "#777777", f"{span}: {total} images"))  # fmt: skip
    ticks = []
    step = 1.0 if hi - lo <= 12 else 2.0 if hi - lo <= 24 else 5.0
    t = np.ceil(lo / step) * step
    while t <= hi + 1e-9:
        ticks.append((round(sx(t), 2), f"{t:+.0f}σ" if t else "0"))
        t += step
    category_list = []
    for c in names:
        mask = np.array([a == c for a in cat_of])
        if mask.any():
            category_list.append(Category(c, colours[c], int(mask.sum()), float(x[mask].mean())))
    shares = {
        c: [round(float(per[c][b] / totals[b]), 4) if totals[b] else 0.0 for b in range(bins)] for c in names
    }
    return CondProbPlot(
        width=width, height=height, plot_top=top_y, plot_bottom=plot_bottom, count_top=count_top,
        count_bottom=count_bottom, pad_left=pad_left, pad_right=pad_right, segments=segments,
        count_bars=count_bars, categories=category_list, x_ticks=ticks,
        zero_x=round(sx(0.0), 2) if lo <= 0 <= hi else None, n=int(values.size), sigma=sigma,
        edges=[round(float(e), 3) for e in edges], shares=shares, counts=[int(t) for t in totals],
    )  # fmt: skip
