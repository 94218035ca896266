"""Helpers for the meaning tests (labels, multimodality, recipes, typographic lab).

Databases are built once per test session by the real pipeline (``run_activations`` then
``run_labels``) and cached here, so several test modules can share them:

* :func:`labelled_db`: a copy of the session's ``tiny_db`` with the labels stage run on it;
* :func:`trained_db`: the shipped (trained) demo model on ``demo:N`` held-out renderings with a
  sample big enough for per-concept statistics; only when the trained weights exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.models import DEMO_WEIGHTS

MODEL_CARD = DEMO_WEIGHTS.parent / "MODEL_CARD.md"
TRAINED_IMAGES = 1000

needs_weights = pytest.mark.skipif(
    not DEMO_WEIGHTS.exists(), reason="the trained demo weights have not landed yet"
)

_cache: dict[str, str] = {}


def labelled_db(tiny_db: Any, demo_loaded: Any, folder: Path) -> str:
    """URL of a copy of ``tiny_db`` on which ``precompute labels`` has run (built once)."""
    if "labelled" not in _cache:
        from precompute.labels import LabelsOptions, run_labels
        from tests.live_support import copy_db

        url = copy_db(tiny_db.path, folder)
        reports = run_labels(url, options=LabelsOptions(progress=False), loaded=demo_loaded)
        assert [r.status for r in reports] == ["done"], reports
        _cache["labelled"] = url
    return _cache["labelled"]


def trained_db(demo_loaded: Any, folder: Path) -> str:
    """URL of an index of the trained demo model on ``demo:1000`` with labels (built once)."""
    if "trained" not in _cache:
        from precompute.activations import run_activations
        from precompute.labels import LabelsOptions, run_labels

        url = f"sqlite:///{folder / 'trained.db'}"
        report = run_activations(
            demo_loaded, f"demo:{TRAINED_IMAGES}", url, top_k=20, batch_size=64,
            sample_size=TRAINED_IMAGES, progress=False,
        )  # fmt: skip
        assert report.status == "done", report
        run_labels(url, options=LabelsOptions(progress=False), loaded=demo_loaded)
        _cache["trained"] = url
    return _cache["trained"]


def card_facts() -> dict[str, Any]:
    """The machine-readable facts block of the demo model card (written by the demo engineer)."""
    match = re.search(r"<!-- facts: (\{.*?\}) -->", MODEL_CARD.read_text(), re.S)
    assert match, "MODEL_CARD.md has no facts block"
    return json.loads(match.group(1))


MULTIMODAL_THRESHOLD = 1.5  # min(d′ objects, d′ text), as in precompute.eval_demo


def named_multimodal_neurons() -> dict[str, int]:
    """concept -> unit of the neurons ``eval-demo`` names as multimodal (model card facts:
    ``[unit, d′ objects, d′ text, d′ drawings]``), only those that pass its threshold."""
    return {
        c: int(v[0])
        for c, v in card_facts()["multimodal_neurons"].items()
        if min(float(v[1]), float(v[2])) >= MULTIMODAL_THRESHOLD
    }


DEMO_2000 = 2000


def demo2000_db(demo_loaded: Any, folder: Path) -> str:
    """URL of an index of the trained demo model on ``demo:2000`` built like the shipped demo
    (default activation sample) with the labels stage run (built once)."""
    if "demo2000" not in _cache:
        from precompute.activations import run_activations
        from precompute.labels import LabelsOptions, run_labels

        url = f"sqlite:///{folder / 'demo2000.db'}"
        report = run_activations(
            demo_loaded, f"demo:{DEMO_2000}", url, top_k=20, batch_size=64, progress=False
        )
        assert report.status == "done", report
        run_labels(url, options=LabelsOptions(progress=False), loaded=demo_loaded)
        _cache["demo2000"] = url
    return _cache["demo2000"]


def best_units() -> dict[str, int]:
    """concept -> the unit ``eval-demo`` finds best (max min(d′ objects, d′ text)), all 14."""
    return {c: int(v[0]) for c, v in card_facts()["multimodal_neurons"].items()}
