"""Read queries used by the web views. Views call these; templates never touch the DB.

Large columns (blob bytes) are never loaded by the listing queries: only hashes and mime types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import from_bytes
from app.db.evidence import title_key
from app.db.schema import (
    ActivationSample,
    Blob,
    FeatureVisualization,
    Image,
    Label,
    LabelEvidence,
    Layer,
    Model,
    Neuron,
    NeuronWord,
    TopExample,
)
from app.db.units import SOURCE_PRIORITY, Thumb, unit_summaries  # noqa: F401 - Thumb, SOURCE_PRIORITY: re-exported
from app.db.units import source_rank as _source_rank
from app.db.units import thumb as _thumb
from app.images import public_dataset_name

MAX_PER_PAGE = 1000
SORT_KEYS = ("unit", "max", "mean", "std", "label_score", "multimodality", "label_auc")


@dataclass
class Example:
    """One of a neuron's top dataset examples."""

    rank: int
    value: float
    image_id: int
    dataset: str
    key: str
    caption: str | None
    meta: dict[str, Any]
    thumb: Thumb
    heatmap: np.ndarray  # (grid_h, grid_w) float32


@dataclass
class NeuronRow:
    """A neuron in a layer listing."""

    unit: int
    mean: float
    std: float
    max: float
    multimodality: float | None
    label: str | None = None
    label_source: str | None = None
    label_score: float | None = None
    thumb: Thumb | None = None
    label_auc: float | None = None  # held-out evidence of the shown label (issue 16)
    label_precision: float | None = None  # share of its concept among the unit's top-20 held-out images
    label_weak: bool = False  # the shown label is not backed (AUC < 0.75 or no evidence)


@dataclass
class NeuronListing:
    rows: list[NeuronRow]
    total: int  # after filtering
    page: int
    per_page: int
    pages: int
    sort: str
    desc: bool
    q: str | None
    has_labels: bool = False
    has_multimodality: bool = False
    sort_keys: list[str] = field(default_factory=list)


# -- models and layers ----------------------------------------------------------------------


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.slug)))


def get_model(session: Session, slug: str) -> Model | None:
    return session.scalar(select(Model).where(Model.slug == slug))


def list_layers(session: Session, model: Model) -> list[Layer]:
    return list(session.scalars(select(Layer).where(Layer.model_id == model.id).order_by(Layer.position)))


def get_layer(session: Session, model: Model, name: str) -> Layer | None:
    return session.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == name))


def neuron_counts(session: Session, layer_ids: list[int]) -> dict[int, int]:
    """Indexed neurons per layer id."""
    if not layer_ids:
        return {}
    rows = session.execute(
        select(Neuron.layer_id, func.count()).where(Neuron.layer_id.in_(layer_ids)).group_by(Neuron.layer_id)
    )
    return {layer_id: count for layer_id, count in rows}


def count_images(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Image)) or 0)


def layer_preview(session: Session, layer: Layer, limit: int = 8) -> list[tuple[int, Thumb]]:
    """The top example thumbnail (:func:`~app.db.units.unit_summaries`) of the ``limit`` neurons
    with a top example and the highest max (for overviews)."""
    units = list(
        session.scalars(
            select(Neuron.unit)
            .join(TopExample, (TopExample.neuron_id == Neuron.id) & (TopExample.rank == 0))
            .join(Image, Image.id == TopExample.image_id)
            .join(Blob, Blob.sha256 == Image.thumb_sha256)
            .where(Neuron.layer_id == layer.id)
            .order_by(Neuron.max.desc(), Neuron.unit)
            .limit(limit)
        )
    )
    summaries = unit_summaries(session, layer, units)
    return [(unit, thumb) for unit in units if (thumb := summaries[unit].thumb) is not None]


# -- neurons --------------------------------------------------------------------------------


def get_neuron(session: Session, layer: Layer, unit: int) -> Neuron | None:
    return session.scalar(select(Neuron).where(Neuron.layer_id == layer.id, Neuron.unit == unit))


def neighbour_units(session: Session, layer: Layer, unit: int) -> tuple[int | None, int | None]:
    """The indexed units just before and after ``unit`` in ``layer``."""
    prev = session.scalar(
        select(func.max(Neuron.unit)).where(Neuron.layer_id == layer.id, Neuron.unit < unit)
    )
    nxt = session.scalar(
        select(func.min(Neuron.unit)).where(Neuron.layer_id == layer.id, Neuron.unit > unit)
    )
    return prev, nxt


def top_examples(session: Session, neuron: Neuron, layer: Layer) -> list[Example]:
    """A neuron's top examples by value (highest first), heatmaps decoded."""
    rows = session.execute(
        select(
            TopExample.rank,
            TopExample.value,
            TopExample.heatmap,
            Image.id,
            Image.dataset,
            Image.key,
            Image.caption,
            Image.meta,
            Blob.sha256,
            Blob.mime,
            Blob.width,
            Blob.height,
        )
        .join(Image, Image.id == TopExample.image_id)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(TopExample.neuron_id == neuron.id)
        .order_by(TopExample.value.desc(), TopExample.rank)
    )
    shape = (layer.grid_h, layer.grid_w)
    examples = []
    for rank, value, heat, image_id, dataset, key, caption, meta, sha, mime, w, h in rows:
        heatmap = from_bytes(heat, "float16", shape) if heat else np.zeros(shape, np.float32)
        thumb = _thumb(sha, mime, w, h)
        image = (image_id, public_dataset_name(dataset), key, caption, meta or {})  # no server paths
        examples.append(Example(rank, float(value), *image, thumb, heatmap))
    return examples


def sample_column(session: Session, layer: Layer, unit: int) -> np.ndarray | None:
    """The stored activation sample of ``unit`` (spatial max over a random image sample)."""
    sample = session.get(ActivationSample, layer.id)
    if sample is None or not sample.values or unit >= sample.n_units:
        return None
    matrix = np.frombuffer(sample.values, dtype=np.dtype("float16").newbyteorder("<"))
    matrix = matrix.reshape(sample.n_images, sample.n_units)
    return matrix[:, unit].astype(np.float32)


def neuron_labels(session: Session, neuron: Neuron) -> list[Label]:
    """Labels of a neuron, best first: manual, then imported, then automatic (by rank)."""
    labels = list(session.scalars(select(Label).where(Label.neuron_id == neuron.id)))
    return sorted(labels, key=lambda lb: (_source_rank(lb.source), lb.rank, -(lb.score or 0.0)))


FEATUREVIS_ORDER = {"positive": 0, "negative": 1, "diversity": 2}


def feature_visualizations(session: Session, neuron: Neuron) -> list[tuple[FeatureVisualization, Thumb]]:
    rows = session.execute(
        select(FeatureVisualization, Blob.mime, Blob.width, Blob.height)
        .join(Blob, Blob.sha256 == FeatureVisualization.blob_sha256)
        .where(FeatureVisualization.neuron_id == neuron.id)
    )
    found = [(fv, _thumb(fv.blob_sha256, mime, w, h)) for fv, mime, w, h in rows]
    return sorted(found, key=lambda it: (FEATUREVIS_ORDER.get(it[0].kind, 9), it[0].kind, it[0].index))


def neuron_words(session: Session, neuron: Neuron) -> list[NeuronWord]:
    return list(
        session.scalars(select(NeuronWord).where(NeuronWord.neuron_id == neuron.id).order_by(NeuronWord.rank))
    )


def list_neurons(
    session: Session,
    layer: Layer,
    *,
    q: str | None = None,
    sort: str = "unit",
    desc: bool | None = None,
    page: int = 1,
    per_page: int = 60,
    min_auc: float | None = None,
) -> NeuronListing:
    """One page of a layer's neurons, filtered by label text ``q`` and sorted by ``sort``.

    ``min_auc`` keeps the neurons with a label (matching ``q``) whose held-out AUC reaches it;
    backed labels are shown before weak ones (:mod:`app.db.evidence`).

    Each row shows its best label (manual, then imported, then automatic by rank), or with ``q``
    its best label containing ``q``; ``label_score`` sorts by that label's score. ``desc`` defaults
    to ascending for ``unit`` and descending for the statistics.
    """
    sort = sort if sort in SORT_KEYS else "unit"
    desc = (sort != "unit") if desc is None else desc
    rows = [
        NeuronRow(unit, mean, std, mx, mm)
        for unit, mean, std, mx, mm in session.execute(
            select(Neuron.unit, Neuron.mean, Neuron.std, Neuron.max, Neuron.multimodality)
            .where(Neuron.layer_id == layer.id)
            .order_by(Neuron.unit)
        )
    ]
    by_unit = {row.unit: row for row in rows}
    label_rows = session.execute(
        select(Neuron.unit, Label.label, Label.source, Label.score, Label.rank, LabelEvidence.auc,
               LabelEvidence.precision, LabelEvidence.n_positive)
        .join(Label, Label.neuron_id == Neuron.id)
        .outerjoin(
            LabelEvidence, (LabelEvidence.neuron_id == Neuron.id) & (LabelEvidence.label == Label.label)
        )
        .where(Neuron.layer_id == layer.id)
    ).all()
    needle = q.strip().lower() if q else ""
    best: dict[int, tuple[Any, ...]] = {}
    matched: set[int] = set()
    for unit, text, source, score, rank, auc, precision, n_pos in label_rows:
        matches = needle in text.lower() if needle else True
        if min_auc is not None:
            matches = matches and auc is not None and auc >= min_auc
        if matches:
            matched.add(unit)
        # the shown label: the best one, or when filtering the best one that matches
        key = (0 if matches else 1, *title_key(_source_rank(source), rank, score, auc, precision, n_pos))
        if unit not in best or key < best[unit][0]:
            best[unit] = (key, text, source, score, auc, precision)
    for unit, (key, text, source, score, auc, precision) in best.items():
        if unit in by_unit:
            row = by_unit[unit]
            row.label, row.label_source, row.label_score = text, source, score
            row.label_auc, row.label_precision, row.label_weak = auc, precision, key[1] != 0
    if needle or min_auc is not None:
        rows = [r for r in rows if r.unit in matched]

    def sort_key(row: NeuronRow) -> tuple[int, float, int]:
        value = getattr(row, sort)
        missing = value is None or (isinstance(value, float) and not np.isfinite(value))
        number = 0.0 if missing else float(value)
        return (1 if missing else 0, -number if desc else number, row.unit)  # missing values last

    rows.sort(key=sort_key)
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    total = len(rows)
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    shown = rows[(page - 1) * per_page : page * per_page]
    _attach_thumbs(session, layer, shown)
    return NeuronListing(
        rows=shown,
        total=total,
        page=page,
        per_page=per_page,
        pages=pages,
        sort=sort,
        desc=desc,
        q=q or None,
        has_labels=bool(label_rows),
        has_multimodality=any(r.multimodality is not None for r in by_unit.values()),
        sort_keys=list(SORT_KEYS),
    )


def _attach_thumbs(session: Session, layer: Layer, rows: list[NeuronRow]) -> None:
    if not rows:
        return
    summaries = unit_summaries(session, layer, [r.unit for r in rows])
    for row in rows:
        summary = summaries.get(row.unit)
        row.thumb = summary.thumb if summary else None


def blob_meta(session: Session, sha256: str) -> tuple[str, int] | None:
    """(mime, size) of a blob without loading its bytes."""
    row = session.execute(
        select(Blob.mime, func.length(Blob.data)).where(Blob.sha256 == sha256)
    ).first()
    return (row[0], int(row[1])) if row else None


def blob_bytes(session: Session, sha256: str) -> tuple[str, bytes] | None:
    row = session.execute(select(Blob.mime, Blob.data).where(Blob.sha256 == sha256)).first()
    return (row[0], bytes(row[1])) if row else None
