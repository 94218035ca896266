"""The search's per-model preparation (app/live/search_prep.py): a background job started at
server startup, never dropped because a request gave up, and answered with 503 + Retry-After
(not a hang, not a 500) while it runs. Real uvicorn servers with a live runner on the tiny index."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.live import search_prep
from app.live.runner import LiveRunner
from app.neurons.calibration import N_NULL
from app.web.app import create_app
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, gradient_rgb, live_server, make_runner, thread_server

SLUG = "demo"


@pytest.fixture(scope="module")
def db_url(tiny_db, tmp_path_factory) -> str:
    return copy_db(tiny_db.path, tmp_path_factory.mktemp("search_warmup"))


class HeldRunner(LiveRunner):
    """A runner whose model thread is held by a queued call until ``gate`` is set (a busy model)."""

    def __init__(self, *args: Any, gate: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.held: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        await super().start()
        # queued before the warm-up's first step: every preparation step waits behind it
        self.held = asyncio.ensure_future(self.submit(lambda _loaded: self.gate.wait(120), timeout=180))


@contextmanager
def served(db_url: str, runner: LiveRunner) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(db_url=db_url, device="cpu"), live_runner=runner)
    with thread_server(app) as base:
        yield base, app


def wait_until(predicate: Any, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_startup_warm_up_prepares_search_before_the_first_request(db_url, demo_loaded) -> None:
    runner = make_runner(demo_loaded, SLUG)
    with served(db_url, runner) as (base, app):
        preps = app.state.search_preparations  # created by the startup hook, before any request
        assert preps.started == 1
        job = preps.jobs[SLUG]
        wait_until(lambda: job.ready or job.error is not None)  # no search request sent yet
        assert job.error is None and job.status()["state"] == "ready" and job.percent == 100
        assert job.done == job.total >= 256  # at least the null words (the recipe's 64 are among them)
        before = runner.stats.jobs
        with httpx.Client(base_url=base, timeout=60) as client:
            started = time.monotonic()
            response = client.get("/search.json", params={"q": "red"})
            first = time.monotonic() - started
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["preparing"] is None and data["zero_shot"]["layers"]
        assert data["recipe"]["null"]["n"] == N_NULL
        # the first search did only its own model work (query embedding, rendered query, written
        # responses), none of the preparation's (>= 10 steps of 32 words); no second preparation
        assert runner.stats.jobs - before <= 3, runner.stats.jobs - before
        assert preps.started == 1
        assert first < 30


def test_search_while_preparing_is_503_and_a_request_that_gives_up_cancels_nothing(
    db_url, demo_loaded, monkeypatch
) -> None:
    monkeypatch.setattr(search_prep, "UNKNOWN_WAIT_S", 0.5)  # how long a search waits without an estimate
    gate = threading.Event()
    runner = HeldRunner(loaded=demo_loaded, slug=SLUG, device="cpu", strict=True, warmup=False, gate=gate,
                        timeout_s=2.0, max_batch=8, queue_size=64)  # fmt: skip
    try:
        with served(db_url, runner) as (base, app), httpx.Client(base_url=base, timeout=60) as client:
            preps = app.state.search_preparations
            job = preps.jobs[SLUG]
            started = time.monotonic()
            response = client.get("/search.json", params={"q": "red"})
            assert time.monotonic() - started < 15  # a clear answer, not a hang
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["cache-control"] == "no-store"
            data = response.json()
            assert data["preparing"]["state"] == "preparing" and data["preparing"]["model"] == SLUG
            assert data["note"].startswith(f"Preparing search for model {SLUG}: 0% done")
            assert data["zero_shot"] is None
            page = client.get("/search", params={"q": "red"})
            assert page.status_code == 503 and "retry-after" in page.headers
            assert "Warming up" in page.text and 'http-equiv="refresh"' in page.text
            assert "js/search.js" in page.text
            fragment = client.get("/search", params={"q": "red"}, headers={"HX-Request": "true"})
            assert fragment.status_code == 503 and "<html" not in fragment.text
            assert 'hx-trigger="load delay:' in fragment.text and 'id="search-results"' in fragment.text
            # a client that gives up mid-request, and waiting past the runner's own 2 s limit,
            # leave the one shared job running (its steps wait for their turn, not for a request)
            with pytest.raises(httpx.TimeoutException):
                client.get("/search.json", params={"q": "blue"}, timeout=0.3)
            time.sleep(runner.timeout_s + 1.0)
            assert preps.jobs[SLUG] is job and job.error is None and not job.task.done()
            gate.set()
            deadline = time.monotonic() + 90
            while True:  # a later request finds it done
                response = client.get("/search.json", params={"q": "red"})
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                assert response.status_code == 503 and "retry-after" in response.headers
                time.sleep(0.2)
            assert response.status_code == 200, response.text
            assert response.json()["zero_shot"]["layers"]
            assert job.ready and preps.started == 1  # computed once, never restarted
    finally:
        gate.set()


def test_preparation_yields_to_live_analyses(db_url, demo_loaded, monkeypatch) -> None:
    """Low priority: an analysis posted while the preparation runs is answered within about one
    of its sub-batches (slowed here to 0.4 s each), not after the whole preparation."""
    real = search_prep._encode_texts

    def slow(loaded: Any, texts: list[str]) -> Any:
        time.sleep(0.4)
        return real(loaded, texts)

    monkeypatch.setattr(search_prep, "_encode_texts", slow)
    png = encode(gradient_rgb((96, 96)), "PNG")
    with live_server(db_url, demo_loaded, SLUG) as (base, _, app), csrf_client(base, timeout=60) as client:
        job = app.state.search_preparations.jobs[SLUG]
        wait_until(lambda: job.done >= search_prep.TEXT_CHUNK)  # one step done, more to go
        sent = time.monotonic()
        answer = client.post("/analyze.json", files={"image": ("g.png", png, "image/png")})
        waited = time.monotonic() - sent
        print(f"analysis during the search preparation: {waited:.2f} s ({job.done}/{job.total} prepared)")
        assert answer.status_code == 200 and answer.json()["layers"][0]["neurons"]
        assert not job.ready and job.total - job.done >= 2 * search_prep.TEXT_CHUNK  # still preparing
        assert waited < 3.0, waited  # the whole preparation takes >= (256 / 16) x 0.4 s = 6.4 s
        done = job.done
        wait_until(lambda: job.done > done)  # and it goes on afterwards


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_browser_warming_up_page_shows_results_by_itself(db_url, demo_loaded, monkeypatch) -> None:
    """The 503 warming-up page asks again by itself (htmx, static/js/search.js) and shows the
    results once the preparation is done, without a reload or a click."""
    from playwright.sync_api import sync_playwright

    monkeypatch.setattr(search_prep, "UNKNOWN_WAIT_S", 0.2)
    gate = threading.Event()
    runner = HeldRunner(loaded=demo_loaded, slug=SLUG, device="cpu", strict=True, warmup=False, gate=gate)
    try:
        with served(db_url, runner) as (base, _app), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                response = page.goto(base + "/search?q=red")
                assert response is not None and response.status == 503
                assert "Warming up" in page.content() and page.locator("progress").count() == 1
                page.evaluate("window.__stayed = true")
                gate.set()
                page.wait_for_function(
                    "() => document.querySelectorAll('#search-results .result').length > 0", timeout=60_000
                )
                assert page.evaluate("window.__stayed === true")  # swapped in place, not reloaded
                assert "Warming up" not in page.content()
                assert not errors, errors
            finally:
                browser.close()
    finally:
        gate.set()
