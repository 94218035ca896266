"""Optional sections of the neuron page (feature visualizations, words, labels, related, ...).

Each section is a module ``app.web.sections.<name>`` with ``load(ctx: NeuronContext)`` returning
JSON-able data (``None`` or empty: the section is not shown), rendered by its own partial
``templates/_partials/neuron_<name>.html`` (which sees ``section`` = that data) and included in the
page's JSON twin under ``sections.<name>``. A feature plugs in by creating its module and partial
and adding one line to :data:`SECTIONS`: no edit to the neuron page. Every listed module must
exist and define ``load``: :func:`section_loader` raises otherwise (nothing is skipped silently).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.db.queries import Example
from app.db.schema import Layer, Model, Neuron
from app.web.urls import Urls


@dataclass
class NeuronContext:
    """What a section loader may use (read-only session)."""

    session: Session
    urls: Urls
    model: Model
    layer: Layer
    neuron: Neuron
    examples: list[Example]
    sample: np.ndarray | None  # this unit's column of the layer's activation sample
    live_runner: Any = None
    summary: Any = None  # app.db.summaries.Summary (precomputed), or None for an older index


@dataclass(frozen=True)
class NeuronSection:
    name: str  # key under "sections" in the JSON twin, and the partial's suffix
    title: str
    order: int  # page position: < 50 above the examples, >= 50 below them

    @property
    def module(self) -> str:
        return f"app.web.sections.{self.name}"

    @property
    def template(self) -> str:
        return f"_partials/neuron_{self.name}.html"


#: Sections in page order. Add one line here (and the module + partial) for a new section.
SECTIONS: list[NeuronSection] = [
    NeuronSection("labels", "Labels", 10),
    NeuronSection("featurevis", "Feature visualization", 20),
    NeuronSection("words", "Top rendered words", 60),
    NeuronSection("condprob", "Conditional probability", 70),
    NeuronSection("related", "Related neurons", 80),
]


def section_loader(section: NeuronSection) -> Callable[[NeuronContext], Any]:
    """The ``load(ctx)`` of ``section``'s module. A listed module that does not exist raises
    ``ModuleNotFoundError``, one without ``load`` raises ``AttributeError``."""
    module = importlib.import_module(section.module)
    load = getattr(module, "load", None)
    if not callable(load):
        raise AttributeError(f"section module {section.module} has no load(ctx) function")
    return load
