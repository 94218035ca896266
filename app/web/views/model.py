"""``/models/{model}``: a model and its indexed layers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db import queries
from app.web.deps import ReadSession
from app.web.formats import respond, split_format
from app.web.lookup import find_model

router = APIRouter()


@router.get("/models/{model}")
def model_page(model: str, request: Request, session: ReadSession) -> Response:
    """A model's indexed layers (``/models/{model}.json`` for JSON)."""
    slug, fmt = split_format(model)
    row = find_model(session, slug)
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
