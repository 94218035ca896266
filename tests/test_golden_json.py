"""Golden JSON twins: the same requests give the same JSON, before and after a refactor.

The pages' ``.json`` twins (home, model, layer, neuron, feature-visualization fragment, atlas,
multimodal, lists, compare, health, versions, oEmbed) and a few error answers are read through
the app over the labelled tiny index (``tiny_db`` + the labels stage, as the meaning tests
build it) and compared with ``tests/golden/*.json``: status, ``Link`` header and body. Floats
are compared to 1e-6 (relative); volatile values (package and Python versions) are normalised.

When a change of behaviour is *intended* (e.g. the labels stage scores differently), rewrite
the goldens with ``CONCEPTSCOPE_UPDATE_GOLDEN=1 pytest tests/test_golden_json.py`` and review
the diff of ``tests/golden/`` in the same commit.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.web.app import create_app
from tests.meaning_support import labelled_db

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CONCEPTSCOPE_UPDATE_GOLDEN") == "1"
REL = 1e-6

LAST, OTHER = "layer4.5", "layer3.0"
N = f"/models/demo/layers/{LAST}/neurons"

#: golden name → request path (with query)
REQUESTS: dict[str, str] = {
    "home": "/.json",
    "model": "/models/demo.json",
    "layer": f"/models/demo/layers/{LAST}.json",
    "layer_sorted": f"/models/demo/layers/{LAST}.json?sort=max&order=desc&page=2&per_page=7",
    "layer_query": f"/models/demo/layers/{OTHER}.json?q=orange&sort=label_score",
    "layer_other": f"/models/demo/layers/{OTHER}.json?per_page=5&page=3",
    "neuron": f"{N}/1.json",
    "neuron_other": f"/models/demo/layers/{OTHER}/neurons/7.json",
    "featurevis": f"{N}/1/featurevis.json",
    "atlas": f"/models/demo/layers/{OTHER}/atlas.json",  # activation profiles (256 units)
    "atlas_last": f"/models/demo/layers/{LAST}/atlas.json",  # directions: t-SNE of 512 units, ~1 s
    "multimodal": "/models/demo/multimodal.json?n=5",
    "multimodal_other": f"/models/demo/multimodal.json?layer={OTHER}&n=3",
    "lists": f"/lists.json?units=demo/{LAST}/1,demo/{OTHER}/2,demo/{LAST}/99999,nope/x/1&title=Mine",
    "compare": f"/compare.json?units=demo/{LAST}/1,demo/{LAST}/2,demo/{OTHER}/3",
    "health": "/-/health",
    "health_json": "/-/health.json",
    "versions": "/-/versions.json",
    "oembed": f"/-/oembed?url=http://testserver{N}/1",
    # errors keep their status and shape
    "error_model": "/models/nope.json",
    "error_layer": "/models/demo/layers/nope.json",
    "error_neuron": f"{N}/99999.json",
    "error_atlas": "/models/demo/layers/nope/atlas.json",
    "error_multimodal": "/models/demo/multimodal.json?layer=nope",
    "error_compare": f"/compare.json?units=demo/{LAST}/1",
    "error_lists": "/lists.json?units=bad",
}

VOLATILE = re.compile(r"^(python|sqlite|htmx|packages\..+|points\.(x|y|row|col))$")
"""Host-dependent values: versions, and the atlas's t-SNE coordinates (t-SNE is chaotic in the last
bits of floating-point rounding, which differ between CPUs' BLAS kernels: the same index laid out on
two x86-64 hosts gave different pictures; ``test_meaning`` checks the layout's clusters and that it
is deterministic on one host)."""


@pytest.fixture(scope="module")
def client(tiny_db, demo_loaded, tmp_path_factory):
    url = labelled_db(tiny_db, demo_loaded, tmp_path_factory.mktemp("golden"))
    with TestClient(create_app(Settings(db_url=url, device="cpu"))) as c:
        yield c


def normalise(value: Any, path: str = "") -> Any:
    """Replace host-dependent values (versions) by their type name."""
    if isinstance(value, dict):
        return {k: normalise(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, path) for v in value]
    if VOLATILE.match(path) and value is not None:
        return f"<{type(value).__name__}>"
    return value


def answer(client: TestClient, url: str) -> dict[str, Any]:
    response = client.get(url)
    return {
        "request": url,
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "link": response.headers.get("link"),
        "body": normalise(response.json()),
    }


def same(a: Any, b: Any, where: str = "$") -> list[str]:
    """Differences between ``a`` (now) and ``b`` (golden), floats to ``REL``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: key {k!r} {'added' if k in a else 'gone'}" for k in sorted(set(a) ^ set(b))]
        for k in a.keys() & b.keys():
            out += same(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items, golden {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in same(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=REL, abs_tol=1e-9) else [f"{where}: {a!r} != golden {b!r}"]
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} != golden {b!r}"]


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_json_twin_matches_its_golden(client: TestClient, name: str) -> None:
    now = answer(client, REQUESTS[name])
    path = GOLDEN / f"{name}.json"
    if UPDATE or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(now, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        if not UPDATE:
            pytest.fail(f"no golden for {name!r}: written {path}, review and commit it")
    golden = json.loads(path.read_text())
    diffs = same(now, golden)
    assert not diffs, f"{name}: {REQUESTS[name]} differs from {path.name}:\n" + "\n".join(diffs[:20])


def test_the_comparison_can_fail() -> None:
    assert same({"a": [1.0, "x"]}, {"a": [1.0 + 1e-9, "x"]}) == []
    assert same({"a": [1.0]}, {"a": [1.1]}) and same({"a": 1}, {"b": 1}) and same([1], [1, 2])
    assert same({"a": 1}, {"a": 1.0}) and same({"a": None}, {"a": 0})
    assert normalise({"packages": {"torch": "2.1"}, "python": "3.12", "db": "x"}) == {
        "packages": {"torch": "<str>"}, "python": "<str>", "db": "x",
    }  # fmt: skip
