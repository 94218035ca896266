"""``conceptscope precompute summaries``: what neuron pages need, computed once per index.

For every indexed layer: each unit's column of the activation sample (so a page reads a few KB,
not the layer's whole sample) and its related units (cosine of embedding directions for a last
block, correlation over the sample otherwise), into ``neuron_summaries``.

Idempotent and resumable: one ``runs`` row per model and input fingerprint (sample and direction
bytes); a finished run with the same inputs is a no-op, an interrupted one continues with the
layers it has not written. Finishing a run changes the index's data version
(:mod:`app.db.version`), so a served index shows the new summaries without a restart.
Run by ``conceptscope demo`` and at the end of ``precompute activations``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.db import make_engine, session_factory
from app.db.schema import ActivationSample, Direction, Layer, Model, Neuron, NeuronSummary
from app.neurons.related import CORRELATION, DIRECTION, all_related_by_correlation, all_related_by_direction
from precompute.runs import checkpoint_run, finish_run, start_run

STAGE = "summaries"
RELATED_K = 16
INSERT_BATCH = 2000


def _fingerprint(session: Session, layer: Layer) -> dict[str, object]:
    sample = session.get(ActivationSample, layer.id)
    direction = session.get(Direction, layer.id)
    n_neurons = session.query(Neuron).filter(Neuron.layer_id == layer.id).count()
    return {
        "layer": layer.name,
        "neurons": n_neurons,
        "sample": hashlib.sha256(sample.values).hexdigest()[:16] if sample and sample.values else None,
        "directions": hashlib.sha256(direction.values).hexdigest()[:16] if direction else None,
        "k": RELATED_K,
    }


def _layer_rows(session: Session, layer: Layer) -> list[dict[str, object]]:
    """``neuron_summaries`` rows of one layer."""
    sample = session.get(ActivationSample, layer.id)
    columns: np.ndarray | None = None
    values: np.ndarray | None = None
    if sample is not None and sample.values:
        raw = np.frombuffer(sample.values, dtype=np.dtype("float16").newbyteorder("<"))
        raw = raw.reshape(sample.n_images, sample.n_units)
        columns = np.ascontiguousarray(raw.T).astype(np.dtype("float16").newbyteorder("<"))
        values = raw.astype(np.float32)
    related: list[list[tuple[int, float]]] | None = None
    method = None
    direction = session.get(Direction, layer.id) if layer.is_last else None
    if direction is not None:
        d = np.frombuffer(direction.values, dtype=np.dtype("float32").newbyteorder("<"))
        related = all_related_by_direction(d.reshape(direction.n_units, direction.embed_dim), RELATED_K)
        method = DIRECTION
    elif values is not None and values.shape[0] >= 3:
        related = all_related_by_correlation(values, RELATED_K)
        method = CORRELATION
    rows = []
    for neuron_id, unit in session.execute(select(Neuron.id, Neuron.unit).where(Neuron.layer_id == layer.id)):
        data: dict[str, object] = {}
        if related is not None and unit < len(related):
            data["related"] = {"method": method, "units": [[u, round(s, 6)] for u, s in related[unit]]}
        column = columns[unit].tobytes() if columns is not None and unit < columns.shape[0] else None
        rows.append({"neuron_id": neuron_id, "layer_id": layer.id, "data": data, "sample": column})
    return rows


def run_summaries(db_url: str, model: str | None = None, *, log: bool = True) -> dict[str, object]:
    """Write the summaries of every layer of ``model`` (default: every model). Returns a report."""
    engine = make_engine(db_url)
    NeuronSummary.__table__.create(engine, checkfirst=True)  # an index built before it existed
    sessions = session_factory(engine)
    report: dict[str, object] = {"layers": 0, "neurons": 0, "skipped": 0}
    t0 = time.perf_counter()
    try:
        with sessions() as session:
            query = select(Model).order_by(Model.id)
            if model:
                query = query.where(Model.slug == model)
            models = list(session.scalars(query))
            if model and not models:
                raise ValueError(f"no model {model!r} in {db_url}")
            for model_row in models:
                layers = list(session.scalars(select(Layer).where(Layer.model_id == model_row.id)
                                              .order_by(Layer.position)))  # fmt: skip
                params = {"layers": [_fingerprint(session, layer) for layer in layers]}
                run = start_run(session, model_row.id, STAGE, params, {"done": []})
                session.commit()
                if run.status == "done":
                    report["skipped"] = int(report["skipped"]) + len(layers)  # type: ignore[call-overload]
                    continue
                done = list((run.progress or {}).get("done", []))
                for layer in layers:
                    if layer.name in done:
                        continue
                    rows = _layer_rows(session, layer)
                    session.execute(delete(NeuronSummary).where(NeuronSummary.layer_id == layer.id))
                    for start in range(0, len(rows), INSERT_BATCH):
                        session.execute(insert(NeuronSummary), rows[start : start + INSERT_BATCH])
                    done.append(layer.name)
                    checkpoint_run(session, run, None, {"done": list(done)})
                    session.commit()
                    report["layers"] = int(report["layers"]) + 1  # type: ignore[call-overload]
                    report["neurons"] = int(report["neurons"]) + len(rows)  # type: ignore[call-overload]
                    if log:
                        print(f"summaries {model_row.slug}/{layer.name}: {len(rows)} neurons", flush=True)
                finish_run(session, run)
                session.commit()
    finally:
        engine.dispose()
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="data/demo.db", help="database file or URL")
    parser.add_argument("--model", default=None, help="model slug (default: every model in the DB)")


def run(args: argparse.Namespace) -> int:
    from app.config import db_url_from_arg

    try:
        report = run_summaries(db_url_from_arg(args.db), args.model)
    except ValueError as exc:
        print(f"conceptscope precompute summaries: error: {exc}", file=sys.stderr)
        return 2
    print(f"summaries: {report['layers']} layer(s), {report['neurons']} neurons written, "
          f"{report['skipped']} up to date, {report['seconds']} s")  # fmt: skip
    return 0
