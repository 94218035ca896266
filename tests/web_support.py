"""Web fixtures shared by the test modules that read the tiny index through the app.

Registered in ``tests/conftest.py`` (a module may define its own to override): the app is
module-scoped over ``tiny_db``, the client an in-process ``httpx.AsyncClient``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.config import Settings
from app.web.app import create_app


@pytest.fixture(scope="module")
def web_app(tiny_db):
    return create_app(Settings(db_url=tiny_db.url))


@pytest.fixture
async def client(web_app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=web_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
