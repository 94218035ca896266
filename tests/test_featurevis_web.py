"""On-demand feature visualization on the web (issue 14): only a POST starts a render.

* GET/HEAD of the neuron page and of the fragment never start a render nor write a row;
* the htmx button POSTs with the visitor's CSRF token (403 without it);
* one render per neuron over all workers (claimed in the DB), a bounded total and a per-client
  limit (429), a render cancelled at its timeout (the model thread is free again), and a stored
  (precomputed) image is never overwritten.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.db import featurevis_jobs as jobs_db
from app.db import make_engine, session_factory
from app.db.analyses import ensure_web_tables
from app.db.schema import FeatureVisJob, FeatureVisualization, Layer, Neuron
from app.neurons import featurevis as fv
from app.web.app import create_app
from tests.csrf_support import TOKEN
from tests.live_support import make_runner

BASE = "http://localhost"


@pytest.fixture
def db_copy(tiny_db, tmp_path):
    path = tmp_path / "copy.db"
    shutil.copy(tiny_db.path, path)
    return f"sqlite:///{path}"


def first_neuron(url: str) -> tuple[str, str, int]:
    engine = make_engine(url)
    with session_factory(engine)() as session:
        layer = session.scalar(select(Layer).where(Layer.is_last))
        slug = layer.model.slug
        name = layer.name
    engine.dispose()
    return slug, name, 5


def count(url: str, table) -> int:
    engine = make_engine(url, create=False)
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
    engine.dispose()
    return n


def client(app, *, token: bool = True) -> httpx.AsyncClient:
    options = {"cookies": {"csrftoken": TOKEN}, "headers": {"X-CSRF-Token": TOKEN}} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, **options)


async def test_missing_visualization_is_rendered_on_demand_and_stored(db_copy, demo_loaded) -> None:
    slug, layer, unit = first_neuron(db_copy)
    runner = make_runner(demo_loaded, slug)
    app = create_app(Settings(db_url=db_copy), live_runner=runner)
    page_url = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    async with runner, client(app) as c, client(app, token=False) as anonymous:
        page = (await c.get(page_url)).text
        assert f'hx-post="{page_url}/featurevis"' in page and f'"X-CSRF-Token": "{TOKEN}"' in page
        assert f'hx-get="{page_url}/featurevis"' not in page  # loading the page starts nothing
        for method in ("GET", "HEAD"):
            for url in (page_url, f"{page_url}/featurevis", f"{page_url}/featurevis.json"):
                assert (await c.request(method, url, headers={"HX-Request": "true"})).status_code == 200
        assert (await c.get(f"{page_url}/featurevis.json")).json()["status"] == "available"
        assert count(db_copy, FeatureVisJob) == 0 and count(db_copy, FeatureVisualization) == 0

        refused = await anonymous.post(f"{page_url}/featurevis", headers={"HX-Request": "true"})
        assert refused.status_code == 403 and count(db_copy, FeatureVisJob) == 0
        first = await c.post(f"{page_url}/featurevis", headers={"HX-Request": "true"})
        assert first.status_code == 200 and "Rendering on the live model" in first.text
        assert "steps at 64 px on the CPU" in first.text and 'hx-trigger="load delay:2s"' in first.text
        assert f"colour start {fv.RenderSettings().colour_start}" in first.text
        for _ in range(240):
            status = (await c.get(f"{page_url}/featurevis.json")).json()
            if status["status"] != "rendering":
                break
            await asyncio.sleep(0.25)
        assert status["status"] == "done", status
        assert [im["kind"] for im in status["images"]] == ["positive", "negative"]
        done = await c.get(f"{page_url}/featurevis", headers={"HX-Request": "true"})
        assert "<img" in done.text and "hx-trigger" not in done.text and "hx-post" not in done.text
        assert f"colour start {fv.RenderSettings().colour_start}" in done.text  # the image's title
        data = (await c.get(page_url + ".json")).json()["sections"]["featurevis"]
        assert [im["kind"] for im in data] == ["positive", "negative"]
        assert data[0]["settings"]["on_demand"] is True and data[0]["settings"]["steps"] == fv.CPU_STEPS
        assert data[0]["objective"] > data[1]["objective"]
        blob = await c.get(data[0]["image"])
        assert blob.status_code == 200 and blob.headers["content-type"] == "image/png"

        again = await c.post(f"{page_url}/featurevis.json")  # stored: nothing restarts, nothing changes
        assert again.status_code == 200 and "stored already" in again.json()["note"]
        assert (await c.get(page_url + ".json")).json()["sections"]["featurevis"] == data
    app.state.engine.dispose()
    app.state.write_engine.dispose()


async def test_featurevis_fragment_without_live_model(db_copy) -> None:
    slug, layer, unit = first_neuron(db_copy)
    app = create_app(Settings(db_url=db_copy))
    page_url = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    async with client(app) as c:
        data = (await c.get(f"{page_url}/featurevis.json")).json()
        assert data["status"] == "unavailable" and "no live model" in data["error"]
        assert "precompute featurevis" in (await c.get(f"{page_url}/featurevis")).text
        assert "featurevis" not in (await c.get(page_url + ".json")).json()["sections"]
        assert (await c.get(f"/models/{slug}/layers/{layer}/neurons/99999/featurevis")).status_code == 404
        assert (await c.post(f"{page_url}/featurevis.json")).status_code == 503
    assert count(db_copy, FeatureVisJob) == 0
    app.state.engine.dispose()
    app.state.write_engine.dispose()


async def test_render_is_cancelled_at_its_timeout_and_limits_hold(db_copy, demo_loaded) -> None:
    slug, layer, unit = first_neuron(db_copy)
    runner = make_runner(demo_loaded, slug)
    settings = Settings(db_url=db_copy).with_(featurevis_timeout_s=2.0, featurevis_max_jobs=1)
    app = create_app(settings, live_runner=runner)
    page_url = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    other_url = f"/models/{slug}/layers/{layer}/neurons/{unit + 1}"
    async with runner, client(app) as c:
        blocker = asyncio.create_task(runner.submit(lambda _loaded: time.sleep(3.0)))  # model thread busy
        await asyncio.sleep(0.1)
        started = await c.post(f"{page_url}/featurevis.json")
        assert started.status_code == 202 and started.json()["status"] == "rendering"
        full = await c.post(f"{other_url}/featurevis.json")  # one render at a time here
        assert full.status_code == 429 and "rendering already" in full.json()["note"]
        await blocker
        for _ in range(100):
            status = (await c.get(f"{page_url}/featurevis.json")).json()
            if status["status"] != "rendering" and job_row(db_copy).finished_at is not None:
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "cancelled" and "time limit" in status["error"]
        row = job_row(db_copy)
        assert row.status == "cancelled" and row.finished_at is not None  # stopped, not just expired
        # the model thread is free again: a live request is answered at once
        before = time.monotonic()
        answer = await asyncio.wait_for(runner.encode_texts(["red"]), timeout=10)
        assert np.isfinite(answer).all() and time.monotonic() - before < 2.0
    assert count(db_copy, FeatureVisualization) == 0  # nothing stored from a cancelled render
    app.state.engine.dispose()
    app.state.write_engine.dispose()


@pytest.mark.slow  # one render's set-up on the CPU (~10-20 s)
def test_a_running_render_stops_at_its_deadline(demo_loaded, monkeypatch) -> None:
    from app.live import jobs

    calls: list[tuple[int, float]] = []  # (step, when the render reported it)
    real_render = fv.render

    def counting_render(*args, progress, **kwargs):
        def count(step: int) -> None:
            calls.append((step, time.monotonic()))
            progress(step)

        return real_render(*args, progress=count, **kwargs)

    monkeypatch.setattr(jobs.fv, "render", counting_render)
    layer = next(la for la in demo_loaded.layers if la.is_last)
    render_settings = fv.default_settings(demo_loaded)
    deadline = time.monotonic() + 0.3
    with pytest.raises(jobs.RenderCancelled):
        jobs._render(demo_loaded, layer.name, 5, render_settings, deadline)  # noqa: SLF001
    # stopped at the first step past the deadline (however fast the steps are on this machine)
    assert calls and max(step for step, _ in calls) < render_settings.steps
    assert sum(when > deadline for _, when in calls) == 1


def job_row(url: str):
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        row = s.scalars(select(FeatureVisJob)).first()
    engine.dispose()
    return row


def test_one_claim_per_neuron_over_workers_and_per_client_limit(db_copy) -> None:
    engine = make_engine(db_copy, create=False)
    ensure_web_tables(engine)
    with session_factory(engine)() as s:
        ids = list(s.scalars(select(Neuron.id).order_by(Neuron.id).limit(3)))
    options = {"settings": {}, "max_jobs": 2, "per_client": 1, "timeout_s": 60.0}
    results: list[jobs_db.Claim] = []
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait()
        results.append(jobs_db.claim(engine, ids[0], worker=f"w{i}", client=f"c{i}", **options))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.ok for r in results) == 1  # six workers race: exactly one renders
    assert all("rendering already" in (r.reason or "") for r in results if not r.ok)
    same_client = jobs_db.claim(engine, ids[1], worker="w9", client="c-x", **options)
    assert same_client.ok
    second = jobs_db.claim(engine, ids[2], worker="w9", client="c-x", **options)
    assert not second.ok and second.busy  # per-client limit (and the total of 2 is reached)
    engine.dispose()


def test_a_stored_visualization_is_never_overwritten(db_copy) -> None:
    engine = make_engine(db_copy, create=False)
    with session_factory(engine)() as s:
        neuron_id = s.scalar(select(Neuron.id).limit(1))
        png = b"\x89PNG first"
        assert jobs_db.store_images(s, neuron_id, [("positive", png, 8, 1.0, {"precomputed": True})])
        assert not jobs_db.store_images(s, neuron_id, [("positive", b"\x89PNG later", 8, 9.0, {})])
        where = FeatureVisualization.neuron_id == neuron_id
        rows = s.scalars(select(FeatureVisualization).where(where)).all()
        assert [(r.objective, r.settings) for r in rows] == [(1.0, {"precomputed": True})]
    engine.dispose()


async def test_page_shows_only_distinct_diversity_images_and_says_how_many(db_copy) -> None:
    """Issue 18: a near-duplicate in a diversity set is hidden and the page says so, with the
    measured distances; a set rendered before diversity was measured is labelled as such."""
    import io

    from PIL import Image

    from app.db import put_blob

    slug, layer, unit = first_neuron(db_copy)
    pairwise = [0.41, 0.07, 0.38]  # image 2 is 0.07 from image 0: a near-duplicate
    engine = make_engine(db_copy, create=False)
    with session_factory(engine)() as s:
        layer_id = s.scalar(select(Layer.id).where(Layer.is_last))
        ids = {u: s.scalar(select(Neuron.id).where(Neuron.layer_id == layer_id, Neuron.unit == u))
               for u in (unit, unit + 1)}  # fmt: skip
        for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (90, 90, 90)]):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
            sha = put_blob(s, buffer.getvalue(), "image/png", 8, 8)
            if i < 3:
                report = {"position": i, "size": 3, "nearest": [0.07, 0.38, 0.07][i], "nearest_pixel": 0.1,
                          "nearest_kept": [0.41, 0.41, 0.07][i],
                          "duplicate_of": 0 if i == 2 else None, "distinct": 2, "pairwise": pairwise,
                          "threshold": fv.DISTINCT_DISTANCE, "measure": "1 - cosine of layer2 activations",
                          "method": fv.DIVERSITY_METHOD}  # fmt: skip
                s.add(FeatureVisualization(neuron_id=ids[unit], kind="diversity", index=i, blob_sha256=sha,
                                           objective=1.0 + i, settings={"diversity": report}))  # fmt: skip
                s.add(FeatureVisualization(neuron_id=ids[unit + 1], kind="diversity", index=i,
                                           blob_sha256=sha, objective=1.0, settings={}))  # fmt: skip
            else:
                s.add(FeatureVisualization(neuron_id=ids[unit], kind="positive", index=0, blob_sha256=sha,
                                           objective=2.0, settings={}))  # fmt: skip
        s.commit()
    engine.dispose()
    app = create_app(Settings(db_url=db_copy))
    base = f"/models/{slug}/layers/{layer}/neurons"
    async with client(app) as c:
        html = (await c.get(f"{base}/{unit}")).text
        fragment = (await c.get(f"{base}/{unit}/featurevis", headers={"HX-Request": "true"})).text
        old = (await c.get(f"{base}/{unit + 1}")).text
    for page in (html, fragment):
        assert page.count('alt="diversity feature visualization') == 2  # the near-duplicate is hidden
        assert 'alt="positive feature visualization' in page
        assert "2 distinct images; a third was a near-duplicate and is hidden" in page
        assert 'data-distinct="2" data-hidden="1"' in page
        assert "0.41, 0.07, 0.38" in page and f"closer than {fv.DISTINCT_DISTANCE}" in page
        assert "diversity 1 · 1 · <span" in page and "diversity 3" not in page
        assert page.count("distance 0.41</span>") == 2 and "distance 0.07" not in page  # to images shown
    assert old.count('alt="diversity feature visualization') == 3
    assert "not measured" in old and "distinct image" not in old
    app.state.engine.dispose()
    app.state.write_engine.dispose()


def test_a_render_yields_to_an_analysis(db_copy, demo_loaded, monkeypatch) -> None:
    """Issue 14 §5: while an on-demand render (started by a CSRF POST, far more steps than it can
    finish) runs on the single model thread, a POSTed analysis is answered within a few seconds,
    from inside the render (which is still running afterwards)."""
    from app.live import jobs
    from tests.csrf_support import csrf_client
    from tests.live_support import encode, gradient_rgb, live_server

    steps: list[int] = []
    running, stop = threading.Event(), threading.Event()
    real_render = fv.render

    def watched_render(*args, progress, **kwargs):
        def step(n: int) -> None:
            steps.append(n)
            if n >= 2:
                running.set()
            if stop.is_set():
                raise jobs.RenderCancelled("the test is over")
            progress(n)

        return real_render(*args, progress=step, **kwargs)

    def many_steps(runner):
        settings, described = real_settings(runner)
        return settings.with_(steps=100_000), {**described, "steps": 100_000}

    real_settings = jobs.render_settings
    monkeypatch.setattr(jobs.fv, "render", watched_render)
    monkeypatch.setattr(jobs, "render_settings", many_steps)
    slug, layer, unit = first_neuron(db_copy)
    page_url = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    png = encode(gradient_rgb((96, 96)), "PNG")
    with live_server(db_copy, demo_loaded, slug, featurevis_timeout_s=120.0) as (base, runner, _app):
        with csrf_client(base, timeout=60) as http:
            quiet = time.monotonic()
            assert http.post("/analyze.json", files={"image": ("g.png", png, "image/png")}).status_code == 200
            quiet = time.monotonic() - quiet
            started = http.post(f"{page_url}/featurevis", headers={"HX-Request": "true"})
            assert started.status_code == 200 and "Rendering on the live model" in started.text
            assert running.wait(60), "the render did not start"
            before = len(steps)
            sent = time.monotonic()
            answer = http.post("/analyze.json", files={"image": ("g.png", png, "image/png")})
            waited = time.monotonic() - sent
            after = len(steps)
            status = http.get(f"{page_url}/featurevis.json").json()["status"]
            stop.set()
            print(f"analysis alone {quiet:.2f} s; during a render {waited:.2f} s "
                  f"(render steps {before} -> {after}; {runner.yielded} live jobs served from inside it)")
            assert answer.status_code == 200 and answer.json()["layers"][0]["neurons"]
            assert waited < 5.0
            assert status == "rendering" and after < 100_000  # the render was still running
            assert runner.yielded >= 1  # answered between two of the render's steps
            for _ in range(100):  # the render stops at its next step
                if http.get(f"{page_url}/featurevis.json").json()["status"] != "rendering":
                    break
                time.sleep(0.1)
