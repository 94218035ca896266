"""The OpenAPI document (placeholder until the schemas are attached; see install_openapi)."""

from __future__ import annotations

from typing import Any


def install_openapi(app: Any) -> None:
    """Attach the OpenAPI rewriting to ``app`` (filled in below)."""
    return None
