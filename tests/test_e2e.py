"""End to end: ``conceptscope serve`` as a real uvicorn subprocess, fetched over loopback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.live_server import REPO, free_port, serve, server_process


@pytest.mark.slow
def test_served_explorer_end_to_end(tiny_db):
    with serve(tiny_db.path) as base, httpx.Client(base_url=base, timeout=30) as client:
        health = client.get("/-/health").json()
        assert health["ok"] is True and health["live"] == "not loaded"
        slug = health["models"][0]
        home = client.get("/")
        assert home.status_code == 200 and f'href="/models/{slug}"' in home.text
        model = client.get(f"/models/{slug}.json").json()
        layer = model["layers"][-1]
        grid = client.get(layer["url"])
        assert grid.status_code == 200 and grid.headers["link"].startswith(f"<{layer['json']}")
        neuron_url = re.search(r'class="neuron-tile" href="([^"]+)"', grid.text).group(1)
        page = client.get(neuron_url)
        assert page.status_code == 200
        data = client.get(neuron_url + ".json").json()
        values = [e["value"] for e in data["examples"]]
        assert values and values == sorted(values, reverse=True)
        # every thumbnail and static asset the page references is served
        for src in set(re.findall(r'src="(/(?:blobs|static)/[^"]+)"', page.text)):
            response = client.get(src)
            assert response.status_code == 200, src
            assert "immutable" in response.headers["cache-control"], src
        assert client.get(neuron_url.rsplit("/", 1)[0] + "/abc").status_code == 404
        assert client.get(neuron_url.rsplit("/", 1)[0] + "/99999.json").json()["status"] == 404


def test_serve_without_database_exits_with_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--db", str(tmp_path / "missing.db"), "--no-live"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "no index database" in result.stderr and "Traceback" not in result.stderr


def test_only_serving_waits_passively() -> None:
    from app.cli import _serves

    assert _serves(["serve", "--db", "x.db"])
    assert not _serves(["demo", "--db", "x.db"])  # builds first, then re-executes itself as serve
    assert not _serves(["precompute", "featurevis", "--db", "serve"])
    assert not _serves([])


@pytest.mark.slow
def test_demo_builds_with_openmp_defaults_then_serves_waiting_passively(tiny_db, tmp_path: Path) -> None:
    from app.cli import _mark_demo_complete

    db = tmp_path / "demo.db"
    shutil.copyfile(tiny_db.path, db)
    _mark_demo_complete(db)  # complete: demo goes straight to serving
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    port = free_port()
    args = ["demo", "--db", str(db), "--host", "127.0.0.1", "--port", str(port)]
    with server_process(args, port, env=env, timeout_s=120) as (base, proc):
        assert httpx.get(f"{base}/-/health", timeout=10).json()["ok"] is True
        # the process re-executed itself: its start-up environment now carries the passive policy
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"OMP_WAIT_POLICY=PASSIVE" in environ
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[2:4] == [b"app.cli", b"serve"]
