"""The whole pipeline on a real PostgreSQL server (started by ``tests/pg_support.py``).

Every precompute stage of ``conceptscope demo`` (``app.cli.DEMO_STAGES``, with tiny settings) on
``demo:300`` into PostgreSQL; every page (HTML and JSON twin) crawled from the app; live analyze,
stored analyses, search and the on-demand feature visualization over HTTP; ``db copy`` from
PostgreSQL to SQLite and from that SQLite file into a second PostgreSQL database, with every
crawled page equal on all three.

Skips (with the reason) only when the PostgreSQL server binaries are missing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select, text
from starlette.routing import Match

from app.cli import DEMO_STAGES, main
from app.config import Settings
from app.db import from_bytes, make_engine, session_factory
from app.db.copy import CopyError, copy_index
from app.db.migrations import current_revision, head_revision
from app.db.schema import (
    Analysis,
    ConceptProfile,
    FeatureVisualization,
    Image,
    Label,
    Layer,
    Neuron,
    NeuronWord,
    Run,
    TopExample,
)
from app.web.app import create_app
from tests.csrf_support import TOKEN, csrf_client
from tests.live_support import encode, gradient_rgb, live_server, make_runner

pytestmark = pytest.mark.slow

DATASET = "demo:300"
WORDS = ["red", "blue", "green", "yellow", "circle", "square", "star", "cat", "dog", "tree", "car", "house"]
#: Tiny settings per stage (the rest of each stage's flags keep their defaults).
STAGE_OPTIONS: dict[str, list[str]] = {
    "activations": ["--dataset", DATASET, "--top-k", "8", "--sample", "100", "--batch-size", "100",
                    "--device", "cpu", "--no-progress"],
    "featurevis": ["--units", "0-1", "--steps", "2", "--size", "32", "--batch", "16", "--diversity", "2",
                   "--device", "cpu", "--no-progress"],
    "words": ["--vocab", "{vocab}", "--top", "5", "--batch", "16", "--device", "cpu", "--no-progress"],
    "labels": ["--top", "4", "--k", "2", "--device", "cpu"],
}  # fmt: skip
PER_ROUTE = 2  # crawl at most this many URLs per route (and set of query keys)
MAX_PAGES = 300


@dataclass
class PgIndex:
    """The demo:300 index built on PostgreSQL, and its copies."""

    url: str
    sqlite_url: str  # db copy PostgreSQL → SQLite
    copy_url: str  # db copy SQLite → a second PostgreSQL database
    stage_seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def pg_index(pg_cluster, tmp_path_factory: pytest.TempPathFactory) -> PgIndex:
    folder = tmp_path_factory.mktemp("pg_index")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    url = pg_cluster.create_database("demo300")
    seconds: dict[str, float] = {}
    for stage in DEMO_STAGES:
        name = stage[1]
        options = [o.replace("{vocab}", str(vocab)) for o in STAGE_OPTIONS.get(name, [])]
        extra = ["--model", "demo"] if name == "activations" else []
        start = time.perf_counter()
        assert main([*stage[:2], *extra, *options, "--db", url]) == 0, name
        seconds[name] = time.perf_counter() - start
    sqlite_url = f"sqlite:///{folder / 'copy.db'}"
    copy_index(url, sqlite_url)
    copy_url = pg_cluster.create_database("demo300_copy")
    assert main(["db", "copy", "--from", sqlite_url, "--to", copy_url, "--batch-rows", "50"]) == 0
    return PgIndex(url, sqlite_url, copy_url, seconds)


def _session(url: str):
    return session_factory(make_engine(url, create=False))()


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


# -- precompute -------------------------------------------------------------------------------


def test_every_stage_ran_on_postgresql(pg_index: PgIndex) -> None:
    print("stage seconds:", {k: round(v, 1) for k, v in pg_index.stage_seconds.items()})
    assert {s[1] for s in DEMO_STAGES} <= set(pg_index.stage_seconds)
    with _session(pg_index.url) as s:
        assert s.bind.dialect.name == "postgresql"
        assert 290 <= _count(s, Image) <= 300  # demo:N skips the world's few undecodable samples
        layers = list(s.scalars(select(Layer).order_by(Layer.position)))
        assert layers and layers[-1].is_last
        assert _count(s, Neuron) == sum(layer.n_units for layer in layers)
        assert _count(s, TopExample) == 8 * _count(s, Neuron)
        assert _count(s, FeatureVisualization) >= 2 * 2 * len(layers)  # positive + negative, units 0-1
        assert set(s.scalars(select(NeuronWord.word)).all()) <= set(WORDS)
        assert _count(s, NeuronWord) >= 5 * layers[-1].n_units
        assert _count(s, Label) > 0 and _count(s, ConceptProfile) > 0
        runs = s.scalars(select(Run)).all()
        assert runs and {r.status for r in runs} == {"done"}, [(r.stage, r.status) for r in runs]
        # top-k per neuron is sorted, heatmaps decode to the layer's grid
        neuron = s.scalar(select(Neuron).where(Neuron.layer_id == layers[-1].id, Neuron.unit == 3))
        query = select(TopExample).where(TopExample.neuron_id == neuron.id).order_by(TopExample.rank)
        tops = s.scalars(query).all()
        values = [t.value for t in tops]
        assert values == sorted(values, reverse=True) and neuron.max == pytest.approx(values[0], rel=1e-3)
        heat = from_bytes(tops[0].heatmap, "float16", (layers[-1].grid_h, layers[-1].grid_w))
        assert np.isfinite(heat).all()
        assert current_revision(s.connection()) == head_revision()


def test_stages_resume_as_no_ops_on_postgresql(pg_index: PgIndex, tmp_path: Path) -> None:
    """Running the activations stage again finds its finished run (the stage protocol on PostgreSQL)."""
    with _session(pg_index.url) as s:
        before = _count(s, TopExample), _count(s, Run)
    stage = next(st for st in DEMO_STAGES if st[1] == "activations")
    assert main([*stage[:2], "--model", "demo", *STAGE_OPTIONS["activations"], "--db", pg_index.url]) == 0
    with _session(pg_index.url) as s:
        assert (_count(s, TopExample), _count(s, Run)) == before


# -- every page, on PostgreSQL and on both copies -------------------------------------------------


def get_routes(routes: list[Any]) -> list[Any]:
    """Every route serving GET, through included routers (FastAPI wraps those)."""
    found: list[Any] = []
    for route in routes:
        inner = getattr(getattr(route, "original_router", route), "routes", None)
        if inner is not None and not isinstance(route, APIRoute):
            found += get_routes(list(inner))
        elif "GET" in (getattr(route, "methods", None) or ()):
            found.append(route)
    return found


def _route_key(routes: list[Any], url: str) -> str | None:
    """The route serving ``url`` and its query keys (``None``: no GET route)."""
    parts = urlsplit(url)
    scope = {"type": "http", "path": parts.path, "method": "GET", "root_path": ""}
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            keys = sorted(k.split("=")[0] for k in parts.query.split("&") if k)
            return f"{route.path}?{','.join(keys)}"
    return None


def _links(body: str) -> list[str]:
    return [u.replace("&amp;", "&") for u in re.findall(r'(?:href|src|hx-get)="(/[^"#]*)"', body)]


def crawl(app: Any, start: list[str], runner: Any = None) -> dict[str, tuple[int, str, str]]:
    """GET every page reachable from ``start`` (and each page's JSON twin from its ``Link``
    header), at most :data:`PER_ROUTE` URLs per route; map URL → (status, content type, body)."""
    seen: dict[str, tuple[int, str, str]] = {}
    per_key: dict[str, int] = {}
    queue = deque(start)
    routes = get_routes(list(app.routes))
    async def run() -> None:
        if runner is not None:
            async with runner:
                await walk()
        else:
            await walk()

    async def walk() -> None:
        transport = httpx.ASGITransport(app=app)
        # a fixed CSRF cookie: forms carry the same token on every database
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                     cookies={"csrftoken": TOKEN}) as client:  # fmt: skip
            while queue and len(seen) < MAX_PAGES:
                url = queue.popleft()
                if url in seen:
                    continue
                key = _route_key(routes, url)
                if key is None or per_key.get(key, 0) >= PER_ROUTE:
                    continue
                per_key[key] = per_key.get(key, 0) + 1
                response = await client.get(url)
                kind = response.headers.get("content-type", "")
                body = response.text if ("html" in kind or "json" in kind) else response.content.hex()
                seen[url] = (response.status_code, kind.split(";")[0], body)
                link = response.headers.get("link", "")
                twin = re.match(r"<([^>]+)>", link)
                if twin and twin.group(1).startswith("/"):
                    queue.appendleft(twin.group(1))
                if "html" in kind:
                    queue.extend(_links(response.text))

    asyncio.run(run())
    return seen


def _start_urls(app: Any, url: str) -> list[str]:
    with _session(url) as s:
        image = s.scalar(select(func.min(Image.id)))
    return ["/", "/search?q=red", "/search?q=circle&kind=labels", f"/typographic?image={image}&word=red",
            *[r.path for r in get_routes(list(app.routes)) if "{" not in r.path]]  # fmt: skip


@pytest.fixture(scope="module")
def crawled(pg_index: PgIndex, demo_loaded) -> dict[str, dict[str, tuple[int, str, str]]]:
    """The crawl of each database, served with a live model (text search, typographic pages)."""
    out = {}
    urls = {"postgresql": pg_index.url, "sqlite": pg_index.sqlite_url, "copy": pg_index.copy_url}
    for name, url in urls.items():
        with _session(url) as s:
            slug = s.scalar(text("SELECT slug FROM models"))
        runner = make_runner(demo_loaded, slug)
        app = create_app(Settings(db_url=url, device="cpu"), live_runner=runner)
        out[name] = crawl(app, _start_urls(app, url), runner)
        app.state.engine.dispose()
        app.state.write_engine.dispose()
    return out


def test_every_page_and_json_twin_on_postgresql(crawled, pg_index: PgIndex) -> None:
    pages = crawled["postgresql"]
    html = [u for u, (_, kind, _) in pages.items() if kind == "text/html"]
    json_ = [u for u, (_, kind, _) in pages.items() if kind == "application/json"]
    # a bare route may ask for parameters (400); a link the pages show must work
    app = create_app(Settings(db_url=pg_index.url, load_live_model=False))
    bare = {r.path for r in get_routes(list(app.routes)) if "{" not in r.path}
    failing = {u: status for u, (status, _, _) in pages.items()
               if status >= 500 or (status >= 400 and u not in bare)}  # fmt: skip
    assert not failing, failing
    assert len(html) >= 10 and len(json_) >= 10, (len(html), len(json_))
    for needed in ("/neurons/", "/layers/", "/multimodal", "/atlas", "/search", "/typographic", "/blobs/"):
        assert any(needed in u for u in pages), needed
    # a neuron page shows its top examples, feature visualization, words and labels from PostgreSQL
    neuron = next(body for u, (_, kind, body) in pages.items()
                  if kind == "application/json" and re.search(r"/neurons/\d+\.json$", u))  # fmt: skip
    assert '"examples"' in neuron


def test_copies_serve_equal_pages(crawled) -> None:
    """PostgreSQL → SQLite → PostgreSQL: the same URLs answer the same bodies everywhere."""
    reference = crawled["postgresql"]
    for name in ("sqlite", "copy"):
        pages = crawled[name]
        assert set(pages) == set(reference), (name, set(pages) ^ set(reference))
        different = [u for u in reference if pages[u] != reference[u] and not u.startswith("/-/versions")]
        assert not different, (name, different[:5])
        versions = pages["/-/versions.json"][2].replace('"database":"sqlite"', '"database":"postgresql"')
        assert versions == reference["/-/versions.json"][2]  # the only difference: which database


# -- db copy ------------------------------------------------------------------------------------


def test_copy_moves_every_row_and_keeps_ids(pg_index: PgIndex) -> None:
    tables = ["models", "layers", "neurons", "blobs", "images", "top_examples", "feature_visualizations",
              "neuron_words", "labels", "runs", "activation_samples", "concept_profiles"]  # fmt: skip
    counts = {}
    for url in (pg_index.url, pg_index.sqlite_url, pg_index.copy_url):
        engine = make_engine(url, create=False)
        with engine.connect() as conn:
            counts[url] = {t: conn.scalar(text(f"SELECT count(*) FROM {t}")) for t in tables}
            counts[url]["ids"] = conn.execute(text("SELECT max(id), sum(id) FROM images")).one()
            counts[url]["blob"] = bytes(conn.scalar(text("SELECT data FROM blobs ORDER BY sha256 LIMIT 1")))
            assert current_revision(conn) == head_revision()
        engine.dispose()
    assert counts[pg_index.url] == counts[pg_index.sqlite_url] == counts[pg_index.copy_url]
    assert all(counts[pg_index.url][t] > 0 for t in tables)


def test_copy_refuses_a_non_empty_target_and_new_rows_get_new_ids(pg_index: PgIndex, capsys) -> None:
    with pytest.raises(CopyError, match="not empty"):
        copy_index(pg_index.sqlite_url, pg_index.copy_url)
    assert main(["db", "copy", "--from", pg_index.sqlite_url, "--to", pg_index.copy_url]) == 1
    assert "not empty" in capsys.readouterr().err
    # the sequences moved past the copied ids: a new row gets the next id
    with _session(pg_index.copy_url) as s:
        top = s.scalar(select(func.max(Label.id)))
        neuron = s.scalar(select(Neuron.id).limit(1))
        s.add(Label(neuron_id=neuron, label="copied-then-added", source="manual"))
        s.commit()
        assert s.scalar(select(Label.id).where(Label.label == "copied-then-added")) == top + 1
        s.execute(text("DELETE FROM labels WHERE label = 'copied-then-added'"))
        s.commit()


def test_copy_rejects_bad_arguments(pg_index: PgIndex, tmp_path: Path, capsys) -> None:
    assert main(["db", "copy", "--from", str(tmp_path / "missing.db"), "--to", pg_index.copy_url]) == 2
    with pytest.raises(CopyError, match="same database"):
        copy_index(pg_index.url, pg_index.url)


# -- live analyze, stored analyses, search, on-demand feature visualization ---------------------------


@pytest.fixture(scope="module")
def live(pg_index: PgIndex, demo_loaded) -> Iterator[tuple[str, Any]]:
    with _session(pg_index.url) as s:
        slug = s.scalar(text("SELECT slug FROM models"))
    with live_server(pg_index.url, demo_loaded, slug) as (base, _runner, app):
        yield base, app


def test_live_analyze_is_stored_in_postgresql(live, pg_index: PgIndex) -> None:
    base, _app = live
    image = encode(gradient_rgb(), "PNG")
    with csrf_client(base, timeout=120) as client:
        result = client.post("/analyze.json", files={"image": ("g.png", image, "image/png")})
        assert result.status_code == 200, result.text
        analysis = result.json()
        page = client.post("/analyze", files={"image": ("g.png", image, "image/png")},
                           data={"classes": "red, blue"}, follow_redirects=False)  # fmt: skip
        assert page.status_code == 303 and f"/analyses/{analysis['id']}" in page.headers["location"]
        stored = client.get(f"/analyses/{analysis['id']}.json")
        assert stored.status_code == 200 and stored.json()["layers"] == analysis["layers"]
        assert client.get(page.headers["location"]).status_code == 200
    with _session(pg_index.url) as s:
        row = s.get(Analysis, analysis["id"])
        assert row is not None and row.result["layers"]


def test_search_on_postgresql(live) -> None:
    base, _app = live
    with httpx.Client(base_url=base, timeout=60) as client:
        for query in ("red", "circle", "star", "zzz-nothing", "%", "'; drop table labels; --"):
            page = client.get("/search", params={"q": query})
            data = client.get("/search.json", params={"q": query})
            assert page.status_code == 200 and data.status_code == 200, query
        assert client.get("/search.json", params={"q": "red"}).json()


def test_on_demand_feature_visualization_on_postgresql(live, pg_index: PgIndex) -> None:
    base, _app = live
    with _session(pg_index.url) as s:
        layer = s.scalar(select(Layer).where(Layer.is_last))
        slug = s.scalar(text("SELECT slug FROM models"))
        done = set(s.scalars(select(Neuron.unit).join(FeatureVisualization)
                             .where(Neuron.layer_id == layer.id)).all())  # fmt: skip
    unit = next(u for u in range(layer.n_units) if u not in done)
    url = f"/models/{slug}/layers/{layer.name}/neurons/{unit}/featurevis"
    with csrf_client(base, timeout=180) as client:
        response = client.post(url + ".json")
        assert response.status_code in (200, 202), response.text
        deadline = time.monotonic() + 240
        status = response.json()
        while status["status"] == "rendering" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get(url + ".json").json()
        assert status["status"] == "done", status
        assert [im["kind"] for im in status["images"]] == ["positive", "negative"]
        assert client.get(status["images"][0]["image"]).status_code == 200
    with _session(pg_index.url) as s:
        neuron = s.scalar(select(Neuron.id).where(Neuron.layer_id == layer.id, Neuron.unit == unit))
        assert _count(s, FeatureVisualization) > 0
        assert s.scalar(select(func.count()).where(FeatureVisualization.neuron_id == neuron)) > 0


def test_demo_command_builds_into_a_postgresql_url(pg_cluster, tmp_path: Path, monkeypatch) -> None:
    """``conceptscope demo --db postgresql+psycopg://…`` uses the URL as-is (no file of that name)."""
    import app.cli as cli

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    tiny = {**STAGE_OPTIONS, "activations": ["--dataset", "demo:24", "--top-k", "4", "--sample", "12",
                                             "--batch-size", "24", "--device", "cpu", "--no-progress"],
            "featurevis": ["--units", "0", "--steps", "1", "--size", "32", "--batch", "8", "--diversity", "0",
                           "--device", "cpu", "--no-progress"]}  # fmt: skip
    stages = [[*stage[:2], *(["--model", "demo"] if stage[1] == "activations" else []),
               *(o.replace("{vocab}", str(vocab)) for o in tiny.get(stage[1], []))]
              for stage in DEMO_STAGES]  # fmt: skip
    monkeypatch.setattr(cli, "DEMO_STAGES", stages)
    monkeypatch.chdir(tmp_path)
    url = pg_cluster.create_database("demo_command")
    assert main(["demo", "--db", url, "--no-serve"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.txt"]  # nothing written as a "path"
    with _session(url) as s:
        assert s.bind.dialect.name == "postgresql"
        assert 20 <= _count(s, Image) <= 24 and _count(s, TopExample) == 4 * _count(s, Neuron) > 0
        assert _count(s, NeuronWord) > 0 and _count(s, ConceptProfile) > 0  # words and labels ran
        done = {r.stage for r in s.scalars(select(Run)) if r.status == "done"}
        before = _count(s, TopExample), _count(s, Run)
    assert {"activations", "words", "labels"} <= done
    assert main(["demo", "--db", url, "--no-serve"]) == 0  # again: every stage finds its finished run
    with _session(url) as s:
        assert (_count(s, TopExample), _count(s, Run)) == before
