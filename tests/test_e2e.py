"""End to end: ``conceptscope serve`` as a real uvicorn subprocess, fetched over loopback."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.live_server import REPO, serve


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
