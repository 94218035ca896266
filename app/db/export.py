"""Bulk exports of an index: units with stats, labels, top examples and words.

Four tables, each a stream of flat records whose keys are :data:`COLUMNS` (documented in the
README, pinned by a test: the keys are stable across versions, new keys are only ever added).
Rows are read in batches (:data:`BATCH` neurons at a time) and written as JSON Lines, CSV or
Parquet (pyarrow, one row group per batch), so memory stays flat on large indexes.

``conceptscope export --db DB --format jsonl|parquet|csv [--out DIR] [--model M] [--layer L]``
writes ``units.*``, ``labels.*``, ``examples.*`` and ``words.*`` into ``DIR``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.evidence import evidence_for
from app.db.schema import Image, Label, Layer, Model, Neuron, NeuronWord, TopExample

BATCH = 2000
FORMATS = ("jsonl", "csv", "parquet")
TABLES = ("units", "labels", "examples", "words")

#: Stable column names and types of each table (``str``, ``int``, ``float``; all nullable).
COLUMNS: dict[str, dict[str, str]] = {
    "units": {
        "model": "str",
        "layer": "str",
        "unit": "int",
        "mean": "float",
        "std": "float",
        "max": "float",
        "multimodality": "float",
        "n_examples": "int",
        "top_label": "str",
    },
    "labels": {
        "model": "str",
        "layer": "str",
        "unit": "int",
        "label": "str",
        "source": "str",
        "score": "float",
        "rank": "int",
        "evidence": "str",
        # held-out evidence of the label text on the unit (table ``label_evidence``; null without)
        "auc": "float",
        "p_value": "float",
        "precision_top20": "float",
        "n_images": "int",
        "n_positive": "int",
        "tag_source": "str",
    },
    "examples": {
        "model": "str",
        "layer": "str",
        "unit": "int",
        "rank": "int",
        "value": "float",
        "image_id": "int",
        "dataset": "str",
        "key": "str",
        "caption": "str",
    },
    "words": {
        "model": "str",
        "layer": "str",
        "unit": "int",
        "rank": "int",
        "word": "str",
        "value": "float",
    },
}

MIME = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


class ExportError(ValueError):
    """A model or layer that the index does not have."""


def _layers(session: Session, model_slug: str | None, layer_name: str | None) -> list[tuple[str, Layer]]:
    query = (
        select(Model.slug, Layer).join(Layer, Layer.model_id == Model.id).order_by(Model.slug, Layer.position)
    )
    if model_slug is not None:
        query = query.where(Model.slug == model_slug)
    if layer_name is not None:
        query = query.where(Layer.name == layer_name)
    found = [(slug, layer) for slug, layer in session.execute(query)]
    if not found and (model_slug or layer_name):
        raise ExportError(f"no layer {layer_name or '*'!r} of model {model_slug or '*'!r} in this index")
    return found


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _neuron_batches(session: Session, layer: Layer) -> Iterator[list[Neuron]]:
    last = -1
    while True:
        batch = list(
            session.scalars(
                select(Neuron)
                .where(Neuron.layer_id == layer.id, Neuron.unit > last)
                .order_by(Neuron.unit)
                .limit(BATCH)
            )
        )
        if not batch:
            return
        yield batch
        last = batch[-1].unit


def _label_evidence(source: str, score: float | None) -> str:
    if source == "auto":
        text = (
            "automatic (CLIP-Dissect style): cosine of the centred mean embedding of the unit's top "
            "examples with the label's centred text embedding"
        )
        return text + (f" = {score:.4g}" if score is not None else "")
    if source.startswith("imported"):
        return f"imported ({source.partition(':')[2] or 'file'})"
    return source


def _rows(
    session: Session, table: str, slug: str, layer: Layer, neurons: list[Neuron]
) -> list[dict[str, Any]]:
    by_id = {n.id: n for n in neurons}
    ids = list(by_id)
    head = {"model": slug, "layer": layer.name}
    if table == "units":
        counts: dict[int, int] = {}
        for nid in session.scalars(select(TopExample.neuron_id).where(TopExample.neuron_id.in_(ids))):
            counts[nid] = counts.get(nid, 0) + 1
        best: dict[int, tuple[tuple[int, int, float], str]] = {}
        for nid, text, source, score, rank in session.execute(
            select(Label.neuron_id, Label.label, Label.source, Label.score, Label.rank).where(
                Label.neuron_id.in_(ids)
            )
        ):
            key = (
                0 if source == "manual" else 1 if source.startswith("imported") else 2,
                rank,
                -(score or 0.0),
            )
            if nid not in best or key < best[nid][0]:
                best[nid] = (key, text)
        return [
            {
                **head,
                "unit": n.unit,
                "mean": _finite(n.mean),
                "std": _finite(n.std),
                "max": _finite(n.max),
                "multimodality": _finite(n.multimodality),
                "n_examples": counts.get(n.id, 0),
                "top_label": best[n.id][1] if n.id in best else None,
            }
            for n in neurons
        ]
    if table == "labels":
        query = (
            select(Label).where(Label.neuron_id.in_(ids)).order_by(Label.neuron_id, Label.source, Label.rank)
        )
        held_out = evidence_for(session, ids)
        out = []
        for lb in session.scalars(query):
            ev = held_out.get((lb.neuron_id, lb.label.lower()))
            out.append(
                {
                    **head,
                    "unit": by_id[lb.neuron_id].unit,
                    "label": lb.label,
                    "source": lb.source,
                    "score": _finite(lb.score),
                    "rank": lb.rank,
                    "evidence": _label_evidence(lb.source, lb.score),
                    "auc": _finite(ev.auc) if ev else None,
                    "p_value": _finite(ev.p_value) if ev else None,
                    "precision_top20": _finite(ev.precision) if ev else None,
                    "n_images": ev.n_images if ev else None,
                    "n_positive": ev.n_positive if ev else None,
                    "tag_source": ev.tag_source if ev else None,
                }
            )
        return out
    if table == "examples":
        query = (
            select(
                TopExample.neuron_id,
                TopExample.rank,
                TopExample.value,
                Image.id,
                Image.dataset,
                Image.key,
                Image.caption,
            )
            .join(Image, Image.id == TopExample.image_id)
            .where(TopExample.neuron_id.in_(ids))
            .order_by(TopExample.neuron_id, TopExample.value.desc(), TopExample.rank)
        )
        out = []
        last_nid, position = None, 0
        for nid, _rank, value, image_id, dataset, key, caption in session.execute(query):
            position = position + 1 if nid == last_nid else 0
            last_nid = nid
            out.append(
                {
                    **head,
                    "unit": by_id[nid].unit,
                    "rank": position,
                    "value": _finite(value),
                    "image_id": image_id,
                    "dataset": dataset,
                    "key": key,
                    "caption": caption,
                }
            )
        out.sort(key=lambda r: (r["unit"], r["rank"]))
        return out
    if table == "words":
        query = (
            select(NeuronWord)
            .where(NeuronWord.neuron_id.in_(ids))
            .order_by(NeuronWord.neuron_id, NeuronWord.rank)
        )
        rows = [
            {
                **head,
                "unit": by_id[w.neuron_id].unit,
                "rank": w.rank,
                "word": w.word,
                "value": _finite(w.value),
            }
            for w in session.scalars(query)
        ]
        rows.sort(key=lambda r: (r["unit"], r["rank"]))
        return rows
    raise ExportError(f"unknown table {table!r} (one of {', '.join(TABLES)})")


def batches(
    sessions: sessionmaker[Session], table: str, model: str | None = None, layer: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The records of ``table`` in batches (each a list of dicts with the keys of ``COLUMNS``)."""
    if table not in COLUMNS:
        raise ExportError(f"unknown table {table!r} (one of {', '.join(TABLES)})")
    with sessions() as session:
        for slug, layer_row in _layers(session, model, layer):
            for neurons in _neuron_batches(session, layer_row):
                rows = _rows(session, table, slug, layer_row, neurons)
                if rows:
                    yield rows
                session.expunge_all()


def check_scope(sessions: sessionmaker[Session], model: str | None, layer: str | None) -> None:
    """Raise :class:`ExportError` if ``model``/``layer`` is not in the index."""
    with sessions() as session:
        _layers(session, model, layer)


# ------------------------------------------------------------------------------- encoders


def jsonl_chunks(rows: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    for batch in rows:
        yield "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch).encode()


def csv_chunks(table: str, rows: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS[table]), lineterminator="\n")
    writer.writeheader()
    for batch in rows:
        writer.writerows(batch)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue().encode()


def arrow_schema(table: str) -> Any:
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS[table].items()])


def write_parquet(table: str, rows: Iterator[list[dict[str, Any]]], sink: str | Path | BinaryIO) -> int:
    """Write ``rows`` to ``sink`` as Parquet, one row group per batch; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(table)
    count = 0
    with pq.ParquetWriter(sink, schema) as writer:
        for batch in rows:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def write_table(
    sessions: sessionmaker[Session],
    table: str,
    fmt: str,
    out: Path,
    model: str | None = None,
    layer: str | None = None,
) -> Path:
    """Write one table to ``out/<table>.<fmt>``; returns the path."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    path = out / f"{table}.{fmt}"
    rows = batches(sessions, table, model, layer)
    if fmt == "parquet":
        write_parquet(table, rows, path)
        return path
    chunks: Callable[[], Iterator[bytes]] = (
        (lambda: jsonl_chunks(rows)) if fmt == "jsonl" else (lambda: csv_chunks(table, rows))
    )
    with path.open("wb") as fh:
        for chunk in chunks():
            fh.write(chunk)
    return path


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="database file or URL")
    parser.add_argument("--format", choices=FORMATS, default="jsonl")
    parser.add_argument("--out", default="data/export", help="output folder (default: %(default)s)")
    parser.add_argument("--model", help="only this model (slug)")
    parser.add_argument("--layer", help="only this layer")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))


def run(args: argparse.Namespace) -> int:
    from app.db import make_engine, session_factory

    db = args.db if "://" in args.db else f"sqlite:///{args.db}"
    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        print(f"no database at {args.db}", file=sys.stderr)
        return 2
    engine = make_engine(db, create=False)
    sessions = session_factory(engine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_scope(sessions, args.model, args.layer)
        for table in args.tables:
            path = write_table(sessions, table, args.format, out, args.model, args.layer)
            print(f"{table}: {path}")
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0
