"""Resolve path parameters to DB rows, or raise a 404 that says what is missing."""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from app.db import queries
from app.db.schema import Layer, Model, Neuron
from app.web.errors import NotFound

_UNIT = re.compile(r"[0-9]{1,9}")


def _show(text: str, limit: int = 120) -> str:
    """``text`` quoted for an error message, shortened if long."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def find_model(session: Session, slug: str) -> Model:
    model = queries.get_model(session, slug)
    if model is None:
        raise NotFound(f"No model {_show(slug)} in this index.")
    return model


def find_layer(session: Session, model: Model, name: str) -> Layer:
    layer = queries.get_layer(session, model, name)
    if layer is None:
        raise NotFound(f"Model {model.slug!r} has no indexed layer {_show(name)}.")
    return layer


def parse_unit(text: str) -> int:
    """A unit number from the URL: decimal digits only (``abc``, ``-1``, ``1e3`` are 404s)."""
    if not _UNIT.fullmatch(text):
        raise NotFound(f"{_show(text)} is not a neuron number (expected 0, 1, 2, ...).")
    return int(text)


def find_neuron(session: Session, model: Model, layer: Layer, text: str) -> Neuron:
    unit = parse_unit(text)
    if unit >= layer.n_units:
        last = layer.n_units - 1
        raise NotFound(f"Layer {layer.name!r} of {model.slug!r} has units 0–{last}; there is no unit {unit}.")
    neuron = queries.get_neuron(session, layer, unit)
    if neuron is None:
        raise NotFound(f"Unit {unit} of layer {layer.name!r} has not been indexed (yet).")
    return neuron
