"""The database schema (SQLAlchemy 2.x). SQLite by default; any SQLAlchemy URL works.

Arrays (heatmaps, activation samples, directions) are stored as raw little-endian bytes with
their dtype and shape alongside; ``app.db.to_bytes`` / ``app.db.from_bytes`` convert them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """An indexed model (open_clip name + weights source)."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    pretrained: Mapped[str | None] = mapped_column(String(1000))
    embed_dim: Mapped[int]
    image_size: Mapped[int]
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    layers: Mapped[list[Layer]] = relationship(back_populates="model", order_by="Layer.position")


class Layer(Base):
    """An indexed layer of a model's vision tower."""

    __tablename__ = "layers"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(200))
    hook: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(40))
    position: Mapped[int]
    n_units: Mapped[int]
    grid_h: Mapped[int]
    grid_w: Mapped[int]
    is_last: Mapped[bool]
    model: Mapped[Model] = relationship(back_populates="layers")


class Neuron(Base):
    """Per-neuron summary statistics over the indexed dataset (of the spatial max)."""

    __tablename__ = "neurons"
    __table_args__ = (UniqueConstraint("layer_id", "unit"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"), index=True)
    unit: Mapped[int]
    mean: Mapped[float] = mapped_column(Float, default=0.0)
    std: Mapped[float] = mapped_column(Float, default=0.0)
    max: Mapped[float] = mapped_column(Float, default=0.0)
    multimodality: Mapped[float | None] = mapped_column(Float)


class Blob(Base):
    """Content-addressed bytes (thumbnails, feature visualizations, uploads)."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(String(40))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int | None]
    height: Mapped[int | None]


class Image(Base):
    """A dataset image: provenance, caption, ground truth and its thumbnail blob."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("dataset", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset: Mapped[str] = mapped_column(String(500))
    key: Mapped[str] = mapped_column(String(1000))  # path, URL or generator index
    position: Mapped[int]  # order within the dataset run
    caption: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. demo ground truth
    thumb_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    width: Mapped[int]
    height: Mapped[int]


class TopExample(Base):
    """One of a neuron's top-k dataset examples, with its heatmap (float16 grid)."""

    __tablename__ = "top_examples"
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    value: Mapped[float]
    heatmap: Mapped[bytes] = mapped_column(LargeBinary)  # float16, grid_h x grid_w


class ActivationSample(Base):
    """Per layer: spatial-max values of a random sample of images x units (float16)."""

    __tablename__ = "activation_samples"
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"), primary_key=True)
    image_ids: Mapped[list[Any]] = mapped_column(default=list)
    n_images: Mapped[int]
    n_units: Mapped[int]
    values: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (n_images, n_units)


class Direction(Base):
    """Per last-block layer: each unit's direction in the joint embedding space (float32)."""

    __tablename__ = "directions"
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"), primary_key=True)
    n_units: Mapped[int]
    embed_dim: Mapped[int]
    values: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (n_units, embed_dim)


class NeuronWord(Base):
    """A neuron's response to a word rendered as an image of text."""

    __tablename__ = "neuron_words"
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)
    word: Mapped[str] = mapped_column(String(200))
    value: Mapped[float]


class FeatureVisualization(Base):
    """An image optimised to excite (or inhibit) a neuron."""

    __tablename__ = "feature_visualizations"
    __table_args__ = (UniqueConstraint("neuron_id", "kind", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # positive | negative | diversity
    index: Mapped[int] = mapped_column(default=0)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    objective: Mapped[float]
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Label(Base):
    """A human-readable label for a neuron: automatic, imported or manual."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("neuron_id", "source", "label"),
        Index("ix_labels_label", "label"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), index=True)
    label: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(40))  # auto | imported:<name> | manual
    score: Mapped[float | None]
    rank: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Analysis(Base):
    """A stored live analysis of one uploaded image (owned by the web process)."""

    __tablename__ = "analyses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    kind: Mapped[str] = mapped_column(String(40), default="image")
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    size_bytes: Mapped[int | None]  # result JSON + image copy, for the byte cap (issue 14)


class FeatureVisJob(Base):
    """An on-demand feature visualization render, claimed in the DB (owned by the web process).

    One row per neuron: whichever web worker inserts it (or takes over a stale one) renders;
    the others only report it. ``client``: a keyed hash of the requesting address (per-client
    limit), never the address itself. ``status``: rendering | done | failed | cancelled.
    """

    __tablename__ = "featurevis_jobs"
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="rendering")
    worker: Mapped[str] = mapped_column(String(64), default="")
    client: Mapped[str] = mapped_column(String(64), default="")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(String(500))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Run(Base):
    """A precompute stage run: parameters, progress and checkpointed state (resumability)."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("model_id", "stage", "params_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    stage: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | done
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[bytes | None] = mapped_column(LargeBinary)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class ConceptProfile(Base):
    """Per layer: each unit's mean response to images of each concept and to the concept's word.

    Written by ``precompute labels`` (multimodality scores, conditional-probability plots).
    ``source`` says where the image concepts come from: ``ground-truth`` (demo world metadata)
    or ``zero-shot`` (pseudo-labels of the dataset images). ``image_tags`` maps a sampled image
    id (as a string) to its concept tags, e.g. ``["red", "circle"]`` or ``["red (text)"]``.
    """

    __tablename__ = "concept_profiles"
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(40))
    concepts: Mapped[list[Any]] = mapped_column(default=list)
    image_counts: Mapped[list[Any]] = mapped_column(default=list)
    image_means: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (concepts, units), NaN = none
    word_values: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (concepts, units)
    word_blobs: Mapped[list[Any]] = mapped_column(default=list)  # sha256 of one rendering per concept
    image_tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UnitMultimodality(Base):
    """Per neuron: its multimodality (issue 16), written by ``precompute labels``.

    ``score`` = min(``picture_d``, ``word_d``) for ``concept``, the concept maximising it (see
    :mod:`app.neurons.multimodality`); ``correlation`` is the older preference correlation, kept
    as a secondary figure. ``neurons.multimodality`` holds the same ``score`` for sorting.
    """

    __tablename__ = "unit_multimodality"
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), primary_key=True)
    concept: Mapped[str | None] = mapped_column(String(300))
    score: Mapped[float | None]
    picture_d: Mapped[float | None]
    word_d: Mapped[float | None]
    correlation: Mapped[float | None]


class LabelEvidence(Base):
    """The evidence of a label text on a neuron (issue 16), computed on held-out images.

    Keyed by neuron and label text, so automatic, imported and manual labels with the same text
    share it. ``auc``: the neuron's activation separating images of the concept from the rest;
    ``p_value``: one-sided Mann–Whitney U; ``precision``: share of concept images among the
    neuron's top-20 held-out images; ``n_images`` / ``n_positive``: held-out images used and how
    many show the concept; ``tag_source``: ``ground-truth`` or ``zero-shot`` (pseudo-labels);
    ``histogram``: ``{"edges": [...], "positive": [...], "negative": [...]}`` (shares per bin).
    """

    __tablename__ = "label_evidence"
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), primary_key=True)
    label: Mapped[str] = mapped_column(String(300), primary_key=True)
    auc: Mapped[float | None]
    p_value: Mapped[float | None]
    precision: Mapped[float | None]
    n_images: Mapped[int] = mapped_column(default=0)
    n_positive: Mapped[int] = mapped_column(default=0)
    tag_source: Mapped[str | None] = mapped_column(String(40))
    histogram: Mapped[dict[str, Any]] = mapped_column(default=dict)


class NeuronSummary(Base):
    """Per neuron: what its page needs, precomputed by ``precompute summaries`` (issue 15).

    ``sample`` is the neuron's column of its layer's activation sample (float16, the sample's
    image order), so a page reads a few KB instead of the whole layer matrix; ``data`` holds the
    related units ``{"related": {"method": "direction"|"correlation", "units": [[unit, sim], ...]}}``.
    """

    __tablename__ = "neuron_summaries"
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sample: Mapped[bytes | None] = mapped_column(LargeBinary)
