"""No GET or HEAD changes state (issue 14): walk every GET route of the app, from its router.

The app serves a copy of the tiny index with a running live model (so the on-demand render and
live pages are reachable) and one stored analysis. Every GET route the router holds is requested
with GET and HEAD (path parameters filled from the index: model, layer, unit, blob, analysis,
static file, export name), plus htmx and query variants of the live pages. Afterwards the
database file (and its WAL) is byte-identical, no route answered 5xx, and no render job exists.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from app.db import make_engine, session_factory
from app.db.schema import Blob, FeatureVisJob, Image, Layer, Model
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, gradient_rgb, live_server

PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def db_state(path: Path) -> dict[str, str]:
    """SHA-256 of the database file and its WAL (the shared-memory index is not content)."""
    out = {}
    for suffix in ("", "-wal"):
        file = Path(str(path) + suffix)
        out[suffix or "db"] = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else "absent"
    return out


def checkpoint(path: Path) -> None:
    """Move the WAL into the main file, so later byte comparisons see every write."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def index_values(url: str) -> dict[str, str]:
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        model = s.scalars(select(Model)).first()
        layer = s.scalar(select(Layer).where(Layer.model_id == model.id, Layer.is_last))
        blob = s.scalar(select(Blob.sha256).join(Image, Image.thumb_sha256 == Blob.sha256).limit(1))
        image_id = s.scalar(select(func.min(Image.id)))
    engine.dispose()
    return {"model": model.slug, "layer": layer.name, "unit": "5", "blob": blob, "image": str(image_id)}


def get_routes(routes: list[Any]) -> list[Any]:
    """Every route serving GET, through included routers (FastAPI wraps those)."""
    found: list[Any] = []
    for route in routes:
        router = getattr(route, "original_router", route)
        inner = getattr(router, "routes", None)
        if inner is not None and not isinstance(route, APIRoute):
            found += get_routes(list(inner))
        elif "GET" in (getattr(route, "methods", None) or ()):  # API routes, docs, openapi.json
            found.append(route)
    return found


def fill(path: str, values: dict[str, str]) -> str:
    return PARAM.sub(lambda m: values.get(m.group(1), "1"), path)


@pytest.mark.slow  # ~80 s: the first atlas request computes the layout (in memory) on this CPU
def test_every_get_and_head_leaves_the_database_byte_identical(tiny_db, demo_loaded, tmp_path) -> None:
    url = copy_db(tiny_db.path, tmp_path)
    path = Path(url.removeprefix("sqlite:///"))
    found = index_values(url)
    with live_server(url, demo_loaded, found["model"]) as (base, _runner, app):
        with csrf_client(base, timeout=120) as client:
            checkpoint(path)
            untouched = db_state(path)
            image = encode(gradient_rgb(), "PNG")
            posted = client.post("/analyze.json", files={"image": ("g.png", image, "image/png")})
            assert posted.status_code == 200, posted.text
            analysis = posted.json()
            checkpoint(path)
            before = db_state(path)
            assert before != untouched  # the comparison sees a write (a POST stores the analysis)

            urls = app.state.urls
            values = {
                **found,
                "name": analysis["id"],
                "the_id": analysis["id"],
                "digest": urls.static("live.css").split("/")[2],
                "path": "live.css",
            }
            hit = analysis["layers"][0]
            routes = get_routes(list(app.routes))
            assert len(routes) >= 20  # the walk really covers the app
            requests: list[str] = []
            for route in routes:
                requests.append(fill(route.path, values))
            requests.append(f"/blobs/{found['blob']}.jpg")
            requests += [f"/models/{found['model']}/export/{n}" for n in ("units.csv", "labels.jsonl")]
            requests += [
                f"/analyses/{analysis['id']}?classes=red,blue",
                f"/analyses/{analysis['id']}?layer={hit['name']}&unit={hit['neurons'][0]['unit']}",
                "/search?q=red",
                "/search.json?q=blue",
                f"/typographic?image={found['image']}&word=red",
                f"/typographic.json?analysis={analysis['id']}&word=blue",
            ]
            failures = []
            for target in requests:
                for method in ("GET", "HEAD"):
                    for headers in ({}, {"HX-Request": "true"}):
                        response = client.request(method, target, headers=headers)
                        if response.status_code >= 500:
                            failures.append((method, target, response.status_code))
            assert not failures, failures
            checkpoint(path)
            after = db_state(path)
    assert after == before, "a GET or HEAD changed the database"
    engine = make_engine(url, create=False)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FeatureVisJob)).scalar() == 0
    engine.dispose()


def test_walk_helpers_fill_every_parameter() -> None:
    values = {"model": "m", "layer": "l", "unit": "5", "digest": "d", "path": "p"}
    assert fill("/models/{model}/layers/{layer}/neurons/{unit}/featurevis", values) == (
        "/models/m/layers/l/neurons/5/featurevis"
    )
    assert fill("/static/{digest}/{path:path}", values) == "/static/d/p"
    assert fill("/x/{unknown}", values) == "/x/1"
