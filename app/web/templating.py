"""Jinja2 globals and filters shared by every template."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI

from app.web.formats import is_htmx


def num(value: Any, digits: int = 3) -> str:
    """A compact number: ``3.14``, ``-0.0123``, ``1.2e+04``; ``—`` for missing."""
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
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(digits - 1, 1)}f}".rstrip("0").rstrip(".")
    return f"{x:.{max(digits - 1, 1)}e}"


def install_template_helpers(app: FastAPI) -> None:
    env = app.state.templates.env
    env.globals["urls"] = app.state.urls
    env.globals["nav"] = app.state.nav
    env.globals["is_htmx"] = is_htmx
    env.globals["live_runner"] = app.state.live_runner
    env.filters["num"] = num
    env.trim_blocks = True
    env.lstrip_blocks = True
