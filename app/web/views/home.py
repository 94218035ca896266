"""``/``: the models in this index."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db import queries
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.modelcard import provenance
from app.web.routing import page

router = APIRouter()


def home_data(request: Request, session: ReadSession) -> dict[str, object]:
    urls = request.app.state.urls
    models = []
    for model in queries.list_models(session):
        layers = queries.list_layers(session, model)
        counts = queries.neuron_counts(session, [layer.id for layer in layers])
        preview_layer = next((layer for layer in reversed(layers) if counts.get(layer.id)), None)
        preview = queries.layer_preview(session, preview_layer, 6) if preview_layer else []
        models.append(
            {
                "slug": model.slug,
                "name": model.name,
                "pretrained": model.pretrained,
                "provenance": provenance(model.name, model.pretrained, urls.model_card(model.slug)),
                "embed_dim": model.embed_dim,
                "image_size": model.image_size,
                "n_layers": len(layers),
                "n_neurons": sum(counts.values()),
                "layers": [
                    {"name": layer.name, "n_units": layer.n_units, "url": urls.layer(model.slug, layer.name)}
                    for layer in layers
                ],
                "preview": [
                    {
                        "unit": unit,
                        "layer": preview_layer.name,
                        "url": urls.neuron(model.slug, preview_layer.name, unit),
                        "thumb": urls.blob(thumb.sha256, thumb.ext),
                    }
                    for unit, thumb in preview
                ]
                if preview_layer
                else [],
                "url": urls.model(model.slug),
                "json": urls.model(model.slug, "json"),
            }
        )
    return {"models": models, "n_images": queries.count_images(session)}


@page(router, "/")
def home(request: Request, session: ReadSession, fmt: str | None) -> Response:
    """The models in this index."""
    urls = request.app.state.urls
    return respond(
        request,
        "home.html",
        home_data(request, session),
        fmt=fmt,
        json_url=urls.home("json"),
        html_url=urls.home(),
    )
