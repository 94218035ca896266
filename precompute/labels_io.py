"""``conceptscope labels import FILE`` and ``conceptscope labels set``: imported and manual labels.

Import reads a CSV or TSV file (delimiter from the extension, else sniffed; ``#`` comment lines
are skipped) with a header row and the columns ``model``, ``layer``, ``unit``, ``label`` and
optionally ``source`` and ``pretrained`` (other columns, e.g. ``family``, are ignored):

* ``model`` is a model slug of the database (``rn50x4-openai``) or an architecture name
  (``RN50x4``); with a name, ``pretrained`` picks among several indexed models of that
  architecture. Labels are about an architecture's units, so a file for ``RN50x4`` /
  ``openai`` also imports into an ``RN50x4`` index with other weights (with a warning).
* ``layer`` is our layer name (``layer4.5``); ``visual.layer4.5`` and the TensorFlow op names of
  the Distill article (``image_block_4/5/Add_6:0``) are accepted too.
* a unit may carry several labels (one row each, kept in file order).

Labels are stored with source ``imported:<source>`` (``--source`` overrides the column; default:
the file name). Importing is idempotent (a label already present is not duplicated) and atomic
(all valid rows in one transaction). Rows that cannot be imported are reported with their line
number and reason; the exit status is 1 when there were any.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.config import DEFAULT_DATA_DIR, db_url_from_arg
from app.db import make_engine, session_factory
from app.db.schema import Label, Layer, Model, Neuron
from app.neurons.labels import IMPORTED_PREFIX, MANUAL_SOURCE

REQUIRED = ("model", "layer", "unit", "label")
MAX_LABEL = 300
_TF_BLOCK = re.compile(r"^image_block_(\d+)/(\d+)(?:/.*)?$")


# ------------------------------------------------------------------------------ arguments


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=str(DEFAULT_DATA_DIR / "demo.db"),
                        help="database file or SQLAlchemy URL (default: %(default)s)")  # fmt: skip


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope labels import``."""
    parser.add_argument("file", type=Path, help="CSV or TSV with columns model, layer, unit, label[, source]")
    _db_argument(parser)
    parser.add_argument("--source", default=None, help="source name (default: the file's source column, "
                        "else the file name); stored as imported:<source>")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="check the file, write nothing")


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope labels set``."""
    _db_argument(parser)
    parser.add_argument("--model", required=True, help="model slug or name")
    parser.add_argument("--layer", required=True, help="layer name, e.g. layer4.0")
    parser.add_argument("--unit", required=True, type=int, help="unit number")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--label", help="the label text (replaces the neuron's manual label)")
    group.add_argument("--clear", action="store_true", help="remove the neuron's manual label")


# ------------------------------------------------------------------------------ resolution


def normalise_layer(name: str) -> str:
    """Accepted spellings of a layer → our layer name (``visual.`` prefix, TF Distill op names)."""
    name = name.strip()
    name = name.removeprefix("visual.")
    match = _TF_BLOCK.match(name)
    if match:
        return f"layer{match.group(1)}.{match.group(2)}"
    return name


class Resolver:
    """Maps (model, pretrained, layer, unit) of a file row to a neuron id, or says why not."""

    def __init__(self, session: Session):
        self.session = session
        self.models = list(session.scalars(select(Model)))
        self.layers: dict[int, dict[str, Layer]] = {}
        self.neurons: dict[int, dict[int, int]] = {}
        self.warnings: Counter[str] = Counter()

    def model(self, text: str, pretrained: str | None) -> Model | str:
        text = text.strip()
        for m in self.models:
            if m.slug == text:
                return m
        named = [m for m in self.models if m.name.lower() == text.lower()]
        if pretrained:
            exact = [m for m in named if (m.pretrained or "").lower() == pretrained.strip().lower()]
            if len(exact) == 1:
                return exact[0]
        if len(named) == 1:
            if pretrained and (named[0].pretrained or "") != pretrained.strip():
                self.warnings[
                    f"labels for {text}/{pretrained} imported into {named[0].slug} "
                    f"(weights: {named[0].pretrained or 'random'})"
                ] += 1
            return named[0]
        known = ", ".join(f"{m.slug} ({m.name})" for m in self.models) or "none"
        if named:
            return f"model {text!r} is ambiguous here (give a slug or a pretrained column); indexed: {known}"
        return f"unknown model {text!r}; this database indexes: {known}"

    def layer(self, model: Model, text: str) -> Layer | str:
        if model.id not in self.layers:
            rows = self.session.scalars(select(Layer).where(Layer.model_id == model.id))
            self.layers[model.id] = {layer.name: layer for layer in rows}
        layers = self.layers[model.id]
        name = normalise_layer(text)
        if name in layers:
            return layers[name]
        return f"model {model.slug} has no indexed layer {text!r}; its layers: {', '.join(sorted(layers))}"

    def neuron(self, layer: Layer, text: str) -> int | str:
        try:
            unit = int(text.strip())
        except ValueError:
            return f"unit {text!r} is not a number"
        if not 0 <= unit < layer.n_units:
            return f"unit {unit} out of range: layer {layer.name} has units 0–{layer.n_units - 1}"
        if layer.id not in self.neurons:
            rows = self.session.execute(select(Neuron.unit, Neuron.id).where(Neuron.layer_id == layer.id))
            self.neurons[layer.id] = {int(u): int(i) for u, i in rows}
        neuron_id = self.neurons[layer.id].get(unit)
        if neuron_id is None:
            return f"unit {unit} of layer {layer.name} is not indexed (run precompute activations)"
        return neuron_id


# ------------------------------------------------------------------------------ import


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    present: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    warnings: list[str] = field(default_factory=list)
    by_source: Counter[str] = field(default_factory=Counter)

    def grouped_problems(self) -> list[tuple[str, list[int]]]:
        """Rejected rows grouped by reason, in order of first occurrence."""
        groups: dict[str, list[int]] = {}
        for line, reason in self.problems:
            groups.setdefault(reason, []).append(line)
        return list(groups.items())

    def summary(self) -> str:
        lines = [f"{self.rows} rows: {self.added} labels added, {self.present} already present or repeated, "
                 f"{len(self.problems)} rejected"]  # fmt: skip
        lines += [f"  source {s}: {n} labels" for s, n in sorted(self.by_source.items())]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def read_rows(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """(line number, row) pairs and the header of a CSV/TSV file; ``#`` comment lines skipped."""
    text = path.read_text(encoding="utf-8-sig")
    numbered = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise ValueError(f"{path}: no header row")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        delimiter = "\t"
    elif suffix == ".csv":
        delimiter = ","
    else:
        delimiter = "\t" if "\t" in numbered[0][1] else ","
    reader = csv.reader(io.StringIO("\n".join(line for _, line in numbered)), delimiter=delimiter)
    parsed = list(reader)
    header = [h.strip().lower() for h in parsed[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    rows = []
    for (n, _), values in zip(numbered[1:], parsed[1:], strict=True):
        rows.append((n, {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}))
    return rows, header


def import_labels(
    session: Session, path: Path, source: str | None = None, dry_run: bool = False
) -> ImportReport:
    """Import the labels of ``path`` (see module docstring); commits unless ``dry_run``."""
    rows, _ = read_rows(path)
    resolver = Resolver(session)
    report = ImportReport(rows=len(rows))
    existing: dict[int, set[tuple[str, str]]] = {}
    next_rank: dict[tuple[int, str], int] = {}
    for line, row in rows:
        model = resolver.model(row["model"], row.get("pretrained"))
        if isinstance(model, str):
            report.problems.append((line, model))
            continue
        layer = resolver.layer(model, row["layer"])
        if isinstance(layer, str):
            report.problems.append((line, layer))
            continue
        neuron_id = resolver.neuron(layer, row["unit"])
        if isinstance(neuron_id, str):
            report.problems.append((line, neuron_id))
            continue
        label = " ".join(row["label"].split())
        if not label:
            report.problems.append((line, "empty label"))
            continue
        if len(label) > MAX_LABEL:
            report.problems.append((line, f"label longer than {MAX_LABEL} characters"))
            continue
        name = (source or row.get("source") or path.stem).strip()
        full_source = name if name.startswith(IMPORTED_PREFIX) else f"{IMPORTED_PREFIX}{name}"
        if neuron_id not in existing:
            existing[neuron_id] = set(
                (str(src), str(text))
                for src, text in session.execute(
                    select(Label.source, Label.label).where(Label.neuron_id == neuron_id)
                )
            )
        if (full_source, label) in existing[neuron_id]:
            report.present += 1
            continue
        key = (neuron_id, full_source)
        if key not in next_rank:
            current = session.scalar(
                select(func.max(Label.rank)).where(Label.neuron_id == neuron_id, Label.source == full_source)
            )
            next_rank[key] = 0 if current is None else current + 1
        session.add(
            Label(neuron_id=neuron_id, label=label, source=full_source, score=None, rank=next_rank[key])
        )
        next_rank[key] += 1
        existing[neuron_id].add((full_source, label))
        report.added += 1
        report.by_source[full_source] += 1
    report.warnings = [f"{w} ({n} rows)" for w, n in resolver.warnings.items()]
    if dry_run:
        session.rollback()
    else:
        session.commit()
    return report


def run_import(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope labels import``."""
    if not args.file.is_file():
        print(f"conceptscope: error: no such file: {args.file}", file=sys.stderr)
        return 2
    sessions = session_factory(make_engine(db_url_from_arg(args.db)))
    with sessions() as session:
        try:
            report = import_labels(session, args.file, args.source, args.dry_run)
        except (ValueError, UnicodeDecodeError, csv.Error) as exc:
            print(f"conceptscope: error: {exc}", file=sys.stderr)
            return 2
    print(("(dry run) " if args.dry_run else "") + report.summary())
    for reason, lines in report.grouped_problems():
        shown = ", ".join(map(str, lines[:12])) + (f", ... ({len(lines)} rows)" if len(lines) > 12 else "")
        print(f"  rejected {args.file} line {shown}: {reason}", file=sys.stderr)
    return 1 if report.problems else 0


# ------------------------------------------------------------------------------ manual


def set_label(session: Session, model: str, layer: str, unit: int, label: str | None) -> str:
    """Replace (or with ``label=None`` remove) a neuron's manual label; returns a message.

    Raises ``LookupError`` for an unknown model, layer or unit, ``ValueError`` for a bad label.
    """
    resolver = Resolver(session)
    found_model = resolver.model(model, None)
    if isinstance(found_model, str):
        raise LookupError(found_model)
    found_layer = resolver.layer(found_model, layer)
    if isinstance(found_layer, str):
        raise LookupError(found_layer)
    neuron_id = resolver.neuron(found_layer, str(unit))
    if isinstance(neuron_id, str):
        raise LookupError(neuron_id)
    where = f"{found_model.slug} {found_layer.name}/{unit}"
    if label is not None:
        label = " ".join(label.split())
        if not label or len(label) > MAX_LABEL:
            raise ValueError(f"a label must be 1–{MAX_LABEL} characters")
    removed = session.execute(
        delete(Label).where(Label.neuron_id == neuron_id, Label.source == MANUAL_SOURCE)
    ).rowcount
    if label is None:
        session.commit()
        return f"{where}: removed {removed} manual label(s)"
    session.add(Label(neuron_id=neuron_id, label=label, source=MANUAL_SOURCE, score=None, rank=0))
    session.commit()
    return f"{where}: manual label {label!r}"


def run_set(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope labels set``."""
    sessions = session_factory(make_engine(db_url_from_arg(args.db)))
    with sessions() as session:
        try:
            print(set_label(session, args.model, args.layer, args.unit, None if args.clear else args.label))
        except (LookupError, ValueError) as exc:
            print(f"conceptscope: error: {exc}", file=sys.stderr)
            return 2
    return 0
