"""Atlas geometry: snap 2-D layout positions to a grid so that no thumbnail hides another."""

from __future__ import annotations

import math
from collections.abc import Sequence


def grid_size(n: int, spare: float = 1.6) -> int:
    """Cells per side for ``n`` points with some room to keep neighbours near each other."""
    return max(1, math.ceil(math.sqrt(max(n, 1) * spare)))


def snap(points: Sequence[tuple[float, float]], cols: int) -> list[tuple[int, int]]:
    """Each point in [0, 1]² to its own cell of a ``cols``×``cols`` grid: the nearest free cell to its
    position (points placed in order of how crowded their home cell is, least crowded first)."""
    if len(points) > cols * cols:
        raise ValueError(f"{len(points)} points do not fit a {cols}x{cols} grid")
    home = [(min(cols - 1, int(x * cols)), min(cols - 1, int(y * cols))) for x, y in points]
    crowd: dict[tuple[int, int], int] = {}
    for cell in home:
        crowd[cell] = crowd.get(cell, 0) + 1
    order = sorted(range(len(points)), key=lambda i: (crowd[home[i]], i))
    taken: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = [(0, 0)] * len(points)
    for i in order:
        x, y = points[i][0] * cols - 0.5, points[i][1] * cols - 0.5
        cx, cy = home[i]
        best = None
        for radius in range(cols):
            ring = [
                (c, r)
                for c in range(max(0, cx - radius), min(cols, cx + radius + 1))
                for r in range(max(0, cy - radius), min(cols, cy + radius + 1))
                if max(abs(c - cx), abs(r - cy)) == radius and (c, r) not in taken
            ]
            if ring:
                best = min(ring, key=lambda cell: (cell[0] - x) ** 2 + (cell[1] - y) ** 2)
                break
        assert best is not None
        taken.add(best)
        out[i] = best
    return out
