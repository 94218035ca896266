"""``/models/{model}``: a model and its indexed layers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db import queries
from app.web.deps import ReadSession
from app.web.errors import NotFound
from app.web.formats import respond
from app.web.lookup import find_model
from app.web.modelcard import card_path, provenance, render_markdown
from app.web.routing import page

router = APIRouter()


@page(router, "/models/{model}")
def model_page(model: str, request: Request, session: ReadSession, fmt: str | None) -> Response:
    """A model's indexed layers (``/models/{model}.json`` for JSON)."""
    row = find_model(session, model)
    urls = request.app.state.urls
    layers = queries.list_layers(session, row)
    counts = queries.neuron_counts(session, [layer.id for layer in layers])
    data = {
        "model": {
            "slug": row.slug,
            "name": row.name,
            "pretrained": row.pretrained,
            "embed_dim": row.embed_dim,
            "image_size": row.image_size,
            "config": row.config,
            "provenance": provenance(row.name, row.pretrained, urls.model_card(row.slug)),
        },
        "exports": {
            table: {ext: urls.export(row.slug, table, ext) for ext in ("jsonl", "csv", "parquet")}
            for table in ("units", "labels", "examples", "words")
        },
        "layers": [
            {
                "name": layer.name,
                "kind": layer.kind,
                "position": layer.position,
                "n_units": layer.n_units,
                "n_indexed": counts.get(layer.id, 0),
                "grid": [layer.grid_h, layer.grid_w],
                "is_last": layer.is_last,
                "url": urls.layer(row.slug, layer.name),
                "json": urls.layer(row.slug, layer.name, "json"),
                "preview": [
                    {
                        "unit": unit,
                        "url": urls.neuron(row.slug, layer.name, unit),
                        "thumb": urls.blob(thumb.sha256, thumb.ext),
                    }
                    for unit, thumb in queries.layer_preview(session, layer, 8)
                ],
            }
            for layer in layers
        ],
        "live": request.app.state.live_runner is not None,
    }
    return respond(
        request,
        "model.html",
        data,
        fmt=fmt,
        json_url=urls.model(row.slug, "json"),
        html_url=urls.model(row.slug),
        context={"title": row.slug, "current_model": row.slug},
    )


@router.get("/models/{model}/card")
def model_card(model: str, request: Request, session: ReadSession) -> Response:
    """The model card of a model that has one (the bundled demo): HTML only, its ``Link`` header
    names the model's JSON twin."""
    row = find_model(session, model)
    path = card_path(row.name)
    if path is None:
        raise NotFound(f"Model {row.slug!r} has no model card in this installation.")
    urls = request.app.state.urls
    text = path.read_text(encoding="utf-8")
    data = {"model": {"slug": row.slug, "name": row.name, "url": urls.model(row.slug)}, "markdown": text}
    return respond(
        request,
        "model_card.html",
        data,
        fmt=None,
        json_url=urls.model(row.slug, "json"),
        html_url=urls.model_card(row.slug),
        context={
            "title": f"Model card · {row.slug}",
            "current_model": row.slug,
            "card_html": render_markdown(text),
        },
    )
