"""Shared fixtures: the demo model and a tiny index database built by the real pipeline.

* ``demo_loaded``: ``load_model(ModelSpec.parse("demo"))`` on the CPU (session-scoped).
* ``rn50_random`` / ``vit_b32_random``: real architectures with seeded random weights.
* ``pg_cluster`` / ``pg_url``: a throw-away PostgreSQL server / a new database on it
  (:mod:`tests.pg_support`; skipped when the server binaries are missing).
* ``tiny_db``: a real SQLite file indexed by ``run_activations`` (demo model, ``demo:48``,
  top-k 8, batch 16, sample 48); an object with ``.url`` (SQLAlchemy URL) and ``.path``.
  Session-scoped and shared: treat it as read-only (copy the file to modify it).

No test touches the network: ``HF_HUB_OFFLINE=1`` is set before anything imports open_clip.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.pg_support import pg_cluster, pg_url  # noqa: E402, F401  (PostgreSQL fixtures)
from tests.web_support import client, web_app  # noqa: E402, F401  (app + async client over tiny_db)

TINY_DATASET = "demo:48"
TINY_TOP_K = 8
TINY_BATCH = 16
TINY_SAMPLE = 48


@dataclass(frozen=True)
class TinyDB:
    """A database file built by the real precompute pipeline."""

    path: Path
    url: str
    report: object  # precompute.activations.ActivationsReport


@pytest.fixture(scope="session")
def demo_loaded():
    """The demo model (bundled weights when present, else seeded random init) on the CPU."""
    from app.models import ModelSpec, load_model

    return load_model(ModelSpec.parse("demo"), "cpu")


@pytest.fixture(scope="session")
def rn50_random():
    """open_clip RN50 (ModifiedResNet) with seeded random weights on the CPU."""
    from app.models import ModelSpec, load_model

    return load_model(ModelSpec.parse("RN50"), "cpu")


@pytest.fixture(scope="session")
def vit_b32_random():
    """open_clip ViT-B-32 (VisionTransformer) with seeded random weights on the CPU."""
    from app.models import ModelSpec, load_model

    return load_model(ModelSpec.parse("ViT-B-32"), "cpu")


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory: pytest.TempPathFactory, demo_loaded) -> TinyDB:
    """A tiny index (demo model on ``demo:48``) built with ``run_activations``."""
    from precompute.activations import run_activations

    path = tmp_path_factory.mktemp("tiny_db") / "tiny.db"
    url = f"sqlite:///{path}"
    report = run_activations(
        demo_loaded,
        TINY_DATASET,
        url,
        top_k=TINY_TOP_K,
        batch_size=TINY_BATCH,
        sample_size=TINY_SAMPLE,
        progress=False,
    )
    assert report.status == "done", report
    return TinyDB(path, url, report)
