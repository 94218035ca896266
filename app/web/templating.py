"""Jinja2 globals and filters shared by every template."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI

from app.web.formats import is_htmx


def ordinal(value: Any, digits: int = 1) -> str:
    """``64.3`` -> ``"64.3rd"``, ``1`` -> ``"1st"``, ``12`` -> ``"12th"`` (issue 16: correct ordinals)."""
    if value is None:
        return "–"
    text = f"{float(value):.{digits}f}".rstrip("0").rstrip(".") if digits else str(round(float(value)))
    tail = text[-2:]
    suffix = "th" if tail in ("11", "12", "13") else {"1": "st", "2": "nd", "3": "rd"}.get(text[-1], "th")
    return text + suffix


def num(value: Any, digits: int = 3) -> str:
    """A compact number with ``digits`` significant digits: ``0.00145``, ``-0.000985``, ``12.3``,
    ``1235``; exponent outside [1e-4, 1e7): ``2.64e-5``, ``3e+9``; ``—`` for missing."""
    if value is None:
        return "—"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if -4 <= magnitude < 7:
        text = f"{x:.{max(0, digits - 1 - magnitude)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent):+d}" if int(exponent) > 0 else f"{mantissa}e{int(exponent)}"


#: Short names of the layer grid's sort keys (for tiles and the sort menu).
SORT_LABELS = {
    "unit": "unit",
    "max": "max",
    "mean": "mean",
    "std": "std",
    "label_score": "label score",
    "multimodality": "multimodality",
    "label_auc": "label AUC",
}


def absolute_url(request: Any, path: str) -> str:
    """``path`` (or an absolute URL) as an absolute URL on the server that got ``request``."""
    if "://" in path:
        return path
    return str(request.base_url).rstrip("/") + path


def install_template_helpers(app: FastAPI) -> None:
    env = app.state.templates.env
    env.globals["urls"] = app.state.urls
    env.globals["nav"] = app.state.nav
    env.globals["serves"] = app.state.route_paths.__contains__  # serves("/models/{model}/...")
    env.globals["is_htmx"] = is_htmx
    env.globals["live_runner"] = app.state.live_runner
    env.globals["absolute_url"] = absolute_url
    env.filters["dict_without"] = lambda d, *keys: {k: v for k, v in dict(d).items() if k not in keys}
    env.filters["num"] = num
    env.filters["ordinal"] = ordinal
    env.globals["SORT_LABELS"] = SORT_LABELS
    env.trim_blocks = True
    env.lstrip_blocks = True
