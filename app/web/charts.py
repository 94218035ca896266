"""Geometry for small inline SVG charts (templates draw; this computes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    lo: float
    hi: float
    count: int


@dataclass
class Histogram:
    """A histogram laid out in a ``width`` × ``height`` SVG box (plot area inside ``pad``)."""

    bars: list[Bar]
    edges: list[float]
    counts: list[int]
    n: int
    width: int
    height: int
    pad_left: int
    pad_bottom: int
    x_ticks: list[tuple[float, str]]  # (svg x, label)
    y_max: int
    markers: list[tuple[float, str, str]]  # (svg x, label, css class)

    def as_json(self) -> dict[str, object]:
        return {"edges": self.edges, "counts": self.counts, "n": self.n}


def _tick_label(x: float) -> str:
    from app.web.templating import num

    return num(x, 2)


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 × 10^k steps) covering ``[lo, hi]``."""
    span = hi - lo
    if span <= 0 or not np.isfinite(span):
        return [lo]
    raw = span / max(target - 1, 1)
    power = 10 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = np.ceil(lo / step) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    return [0.0 if abs(t) < step * 1e-9 else float(t) for t in ticks]


def histogram(
    values: np.ndarray,
    *,
    bins: int = 40,
    width: int = 560,
    height: int = 160,
    markers: dict[str, tuple[float, str]] | None = None,
) -> Histogram | None:
    """Histogram of ``values`` with optional vertical ``markers`` {label: (value, css class)}."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    marks = {k: v for k, v in (markers or {}).items() if v[0] is not None and np.isfinite(v[0])}
    for value, _css in marks.values():
        lo, hi = min(lo, value), max(hi, value)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    pad_left, pad_bottom, pad_top = 8, 22, 6
    plot_w, plot_h = width - 2 * pad_left, height - pad_bottom - pad_top
    y_max = int(counts.max()) or 1

    def sx(v: float) -> float:
        return pad_left + (v - lo) / (hi - lo) * plot_w

    bars = []
    for i, count in enumerate(counts):
        x0, x1 = sx(edges[i]), sx(edges[i + 1])
        h = plot_h * count / y_max
        bars.append(
            Bar(round(x0, 2), round(pad_top + plot_h - h, 2), round(max(x1 - x0 - 1, 0.5), 2), round(h, 2),
                float(edges[i]), float(edges[i + 1]), int(count))
        )
    ticks = [(round(sx(v), 2), _tick_label(v)) for v in nice_ticks(lo, hi)]
    mark_list = [(round(sx(v), 2), label, css) for label, (v, css) in marks.items()]
    return Histogram(
        bars=bars,
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        n=int(values.size),
        width=width,
        height=height,
        pad_left=pad_left,
        pad_bottom=pad_bottom,
        x_ticks=ticks,
        y_max=y_max,
        markers=mark_list,
    )
