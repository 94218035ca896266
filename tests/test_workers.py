"""``conceptscope serve --workers N``: worker processes over one index answer pages, and all of
them pick up a finished precompute run without a restart."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db import make_engine, session_factory
from app.db.schema import Layer
from precompute.summaries import run_summaries
from tests.live_server import free_port, server_process


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_two_workers_answer_pages_and_see_a_finished_run(tiny_db, tmp_path):
    path = tmp_path / "w.db"
    shutil.copy(tiny_db.path, path)
    url = f"sqlite:///{path}"
    with session_factory(make_engine(url, create=False))() as s:
        layer = s.scalars(select(Layer).order_by(Layer.position)).first()
        slug, name = layer.model.slug, layer.name
    pages = ["/", f"/models/{slug}", f"/models/{slug}/layers/{name}",
             *(f"/models/{slug}/layers/{name}/neurons/{u}.json" for u in range(6))]  # fmt: skip
    port = free_port()
    args = ["serve", "--db", str(path), "--host", "127.0.0.1", "--port", str(port), "--no-live",
            "--log-level", "warning", "--workers", "2"]  # fmt: skip
    with server_process(args, port, timeout_s=240) as (base, proc):
        with httpx.Client(base_url=base, timeout=60) as client:

            def get(page: str) -> httpx.Response:
                return client.get(page)

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(get, pages * 4))
            assert [r.status_code for r in answers] == [200] * len(answers)
            workers = [c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)]
            assert len(workers) == 2, workers  # two uvicorn worker processes (spawned)
            etag = answers[-1].headers["etag"]
            before = client.get(pages[-1]).json()["sections"]["related"]["precomputed"]
            assert before is False
            run_summaries(url, log=False)  # another process finishes a precompute run
            time.sleep(2.5)  # each worker re-reads the data version at most every second
            with ThreadPoolExecutor(8) as pool:
                after = list(pool.map(get, [pages[-1]] * 16))
            assert all(r.status_code == 200 and r.headers["etag"] != etag for r in after)
            assert all(r.json()["sections"]["related"]["precomputed"] is True for r in after)
