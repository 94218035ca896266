"""Unit cards: one neuron's evidence in a compact form (lists, comparisons, embeds, previews).

A card holds what a reader needs to judge the neuron without opening its page: statistics,
its labels (with source and score), top examples (values, provenance, thumbnails), top rendered
words, the feature visualization and the activation sample for a histogram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from app.db import queries
from app.db.schema import Label, Layer, Model, Neuron, NeuronWord
from app.db.units import Thumb

MAX_UNITS = 60
_UNIT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class UnitRef:
    """``model/layer/unit`` as written in list and comparison URLs."""

    model: str
    layer: str
    unit: int

    def __str__(self) -> str:
        return f"{self.model}/{self.layer}/{self.unit}"


class BadUnitRef(ValueError):
    """A malformed ``model/layer/unit`` reference."""


def parse_refs(text: str | None, limit: int = MAX_UNITS) -> list[UnitRef]:
    """Comma-separated ``model/layer/unit`` references (duplicates dropped, order kept)."""
    refs: list[UnitRef] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        bits = part.rsplit("/", 2)
        if len(bits) != 3 or not bits[0] or not bits[1] or not _UNIT.fullmatch(bits[2]):
            raise BadUnitRef(
                f"{part[:120]!r} is not a unit reference (expected model/layer/unit, e.g. demo/layer4.5/106)"
            )
        ref = UnitRef(bits[0], bits[1], int(bits[2]))
        if ref not in refs:
            refs.append(ref)
        if len(refs) > limit:
            raise BadUnitRef(f"at most {limit} units per list")
    return refs


@dataclass
class UnitCard:
    ref: UnitRef
    model: Model
    layer: Layer
    neuron: Neuron
    labels: list[Label]
    examples: list[queries.Example]
    words: list[NeuronWord]
    featurevis: Thumb | None
    sample: np.ndarray | None = field(default=None, repr=False)


def unit_card(session: Session, ref: UnitRef, n_examples: int = 6, n_words: int = 8) -> UnitCard | None:
    """The card of ``ref``, or ``None`` when the index does not have that unit."""
    model = queries.get_model(session, ref.model)
    layer = queries.get_layer(session, model, ref.layer) if model else None
    neuron = queries.get_neuron(session, layer, ref.unit) if layer else None
    if model is None or layer is None or neuron is None:
        return None
    vis = next(
        (thumb for fv, thumb in queries.feature_visualizations(session, neuron) if fv.kind == "positive"),
        None,
    )
    return UnitCard(
        ref=ref,
        model=model,
        layer=layer,
        neuron=neuron,
        labels=queries.neuron_labels(session, neuron),
        examples=queries.top_examples(session, neuron, layer)[:n_examples],
        words=queries.neuron_words(session, neuron)[:n_words],
        featurevis=vis,
        sample=queries.sample_column(session, layer, neuron.unit),
    )


def unit_cards(session: Session, refs: list[UnitRef], **kwargs: int) -> list[tuple[UnitRef, UnitCard | None]]:
    """A card (or ``None``: not in this index) for each of ``refs``, in order."""
    return [(ref, unit_card(session, ref, **kwargs)) for ref in refs]
