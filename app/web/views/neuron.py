"""``/models/{model}/layers/{layer}/neurons/{unit}``: one neuron.

Top dataset examples (sorted by value, with heatmap overlays), statistics, the activation
histogram of the stored sample (inline SVG), prev/next links, and the optional sections of
:mod:`app.web.sections` (labels, feature visualizations, words, ...).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db import queries
from app.db.summaries import neuron_summary
from app.web import sections as neuron_sections
from app.web.charts import histogram
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.heatmaps import colour_bar_stops, heatmap_data_uri
from app.web.lookup import find_layer, find_model, find_neuron
from app.web.routing import page
from app.web.sections import NeuronContext, NeuronSection, section_loader

router = APIRouter()
log = logging.getLogger("conceptscope.web")


def load_sections(ctx: NeuronContext) -> list[tuple[NeuronSection, Any]]:
    """(section, data) for every section that has data for this neuron, in page order."""
    found = []
    for section in sorted(neuron_sections.SECTIONS, key=lambda s: s.order):
        data = section_loader(section)(ctx)
        if data:
            found.append((section, data))
    return found


@page(router, "/models/{model}/layers/{layer}/neurons/{unit}")
def neuron_page(
    model: str, layer: str, unit: str, request: Request, session: ReadSession, fmt: str | None
) -> Response:
    """A neuron's top examples, statistics and histogram (``.../neurons/{unit}.json`` for JSON)."""
    model_row = find_model(session, model)
    layer_row = find_layer(session, model_row, layer)
    neuron = find_neuron(session, model_row, layer_row, unit)
    urls = request.app.state.urls
    slug, name = model_row.slug, layer_row.name
    examples = queries.top_examples(session, neuron, layer_row)
    summary = neuron_summary(session, neuron)  # precomputed: a few KB, whatever the index size
    if summary is not None and summary.sample is not None:
        sample = summary.sample
    else:  # an index without summaries (or no sample): read the column from the layer's sample
        sample = queries.sample_column(session, layer_row, neuron.unit)
    prev_unit, next_unit = queries.neighbour_units(session, layer_row, neuron.unit)
    ctx = NeuronContext(
        session, urls, model_row, layer_row, neuron, examples, sample, request.app.state.live_runner,
        summary,
    )
    sections = load_sections(ctx)
    scale = max((e.value for e in examples), default=0.0)
    hist = (
        histogram(
            sample,
            markers={
                "mean": (neuron.mean, "mark-mean"),
                f"top-{len(examples)} cut-off": (examples[-1].value, "mark-topk") if examples else (None, ""),
            },
        )
        if sample is not None
        else None
    )
    data = {
        "model": {"slug": slug, "name": model_row.name, "url": urls.model(slug)},
        "layer": {
            "name": name,
            "kind": layer_row.kind,
            "n_units": layer_row.n_units,
            "grid": [layer_row.grid_h, layer_row.grid_w],
            "is_last": layer_row.is_last,
            "url": urls.layer(slug, name),
        },
        "unit": neuron.unit,
        "permalink": urls.neuron(slug, name, neuron.unit),
        "stats": {
            "mean": neuron.mean,
            "std": neuron.std,
            "max": neuron.max,
            "multimodality": neuron.multimodality,
            "n_examples": len(examples),
            "top_k_min": examples[-1].value if examples else None,
            "sample_size": int(sample.size) if sample is not None else 0,
        },
        # the JSON twin links to JSON pages, the HTML page to HTML pages
        "prev": urls.neuron(slug, name, prev_unit, fmt) if prev_unit is not None else None,
        "next": urls.neuron(slug, name, next_unit, fmt) if next_unit is not None else None,
        "examples": [
            {
                "rank": e.rank,
                "value": e.value,
                "image": {
                    "id": e.image_id,
                    "dataset": e.dataset,
                    "key": e.key,
                    "caption": e.caption,
                    "meta": e.meta,
                },
                "thumb": urls.blob(e.thumb.sha256, e.thumb.ext),
                "heatmap": np.round(e.heatmap.astype(np.float64), 4).tolist(),  # vectorised (top-100 x 9x9)
            }
            for e in examples
        ],
        "histogram": hist.as_json() if hist else None,
        "sections": {section.name: section_data for section, section_data in sections},
    }
    overlays = [heatmap_data_uri(e.heatmap, scale) for e in examples] if fmt != "json" else []
    return respond(
        request,
        "neuron.html",
        data,
        fmt=fmt,
        json_url=urls.neuron(slug, name, neuron.unit, "json"),
        html_url=urls.neuron(slug, name, neuron.unit),
        context={
            "title": f"{name}/{neuron.unit} · {slug}",
            "current_model": slug,
            "overlays": overlays,
            "thumb_sizes": [(e.thumb.width, e.thumb.height) for e in examples],
            "histogram": hist,
            "sections_above": [(s, d) for s, d in sections if s.order < 50],
            "sections_below": [(s, d) for s, d in sections if s.order >= 50],
            "colour_stops": colour_bar_stops(),
        },
    )
