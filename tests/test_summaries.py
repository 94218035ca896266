"""``precompute summaries`` (precompute/summaries.py) and the neuron page reading them."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from app.config import Settings
from app.db import make_engine, queries, session_factory
from app.db.related import related_units
from app.db.schema import Layer, Neuron, NeuronSummary, Run
from app.db.summaries import neuron_summary
from app.db.version import read_data_version
from app.web.app import create_app
from precompute.summaries import STAGE, run_summaries


@pytest.fixture
def db_copy(tiny_db, tmp_path):
    path = tmp_path / "copy.db"
    shutil.copy(tiny_db.path, path)
    return path, f"sqlite:///{path}"


def _sessions(url: str):
    return session_factory(make_engine(url, create=False))


def test_summaries_match_what_pages_computed(db_copy):
    _, url = db_copy
    with _sessions(url)() as s:
        before = read_data_version(s)
    report = run_summaries(url, log=False)
    with _sessions(url)() as s:
        assert read_data_version(s) != before  # a finished run: served pages refresh
        layers = list(s.scalars(select(Layer).order_by(Layer.position)))
        assert report["layers"] == len(layers)
        assert s.scalar(select(func.count()).select_from(NeuronSummary)) == s.scalar(
            select(func.count()).select_from(Neuron)
        )
        for layer in layers:
            for unit in (0, 3, layer.n_units - 1):
                neuron = queries.get_neuron(s, layer, unit)
                summary = neuron_summary(s, neuron)
                assert summary is not None
                column = queries.sample_column(s, layer, unit)
                np.testing.assert_array_equal(summary.sample, column)
                live = related_units(s, layer, unit, 8)
                assert summary.related_method == live[0].method
                got = summary.related[: len(live)]
                assert [u for u, _ in got][:5] == [r.unit for r in live][:5]
                np.testing.assert_allclose([v for _, v in got], [r.similarity for r in live], atol=1e-4)
    again = run_summaries(url, log=False)
    assert again["layers"] == 0 and again["skipped"] == len(layers)  # idempotent


def test_interrupted_run_resumes_with_missing_layers(db_copy):
    _, url = db_copy
    run_summaries(url, log=False)
    with _sessions(url)() as s:
        first = s.scalars(select(Layer).order_by(Layer.position)).first()
        s.execute(update(Run).where(Run.stage == STAGE).values(status="running", finished_at=None,
                                                               progress={"done": [first.name]}))  # fmt: skip
        others = [la.id for la in s.scalars(select(Layer).where(Layer.id != first.id))]
        s.query(NeuronSummary).filter(NeuronSummary.layer_id.in_(others)).delete()
        s.commit()
    report = run_summaries(url, log=False)
    assert report["layers"] == len(others)
    with _sessions(url)() as s:
        assert s.scalar(select(Run.status).where(Run.stage == STAGE)) == "done"
        assert s.scalar(select(func.count()).select_from(NeuronSummary)) == s.scalar(
            select(func.count()).select_from(Neuron)
        )


def test_neuron_page_uses_summaries_and_old_index_still_serves_without_writing(db_copy, tmp_path):
    path, url = db_copy
    with _sessions(url)() as s:
        layer = s.scalars(select(Layer).order_by(Layer.position)).first()
        slug, name = layer.model.slug, layer.name
    page = f"/models/{slug}/layers/{name}/neurons/2.json"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with TestClient(create_app(Settings(db_url=url))) as client:
        old = client.get(page).json()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # a GET wrote nothing
    assert old["sections"]["related"]["precomputed"] is False and old["stats"]["sample_size"] > 0
    run_summaries(url, log=False)
    with TestClient(create_app(Settings(db_url=url))) as client:
        new = client.get(page).json()
    assert new["sections"]["related"]["precomputed"] is True
    assert new["sections"]["related"]["neurons"] == old["sections"]["related"]["neurons"]
    assert new["histogram"] == old["histogram"] and new["stats"] == old["stats"]
