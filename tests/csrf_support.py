"""A test client that sends a CSRF token like a browser on this site (cookie + echo header)."""

from __future__ import annotations

from typing import Any

import httpx

TOKEN = "0123456789abcdef0123456789abcdef"


def csrf_client(base_url: str, **options: Any) -> httpx.Client:
    """An ``httpx.Client`` whose form POSTs pass :mod:`app.web.csrf` (cookie == header)."""
    headers = {"X-CSRF-Token": TOKEN, **options.pop("headers", {})}
    return httpx.Client(base_url=base_url, headers=headers, cookies={"csrftoken": TOKEN}, **options)
