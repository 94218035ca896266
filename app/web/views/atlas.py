"""``/models/{model}/layers/{layer}/atlas``: a layer's neurons laid out in 2-D.

Units with similar embedding directions (last block) or activation profiles (other layers) sit
close together (:mod:`app.neurons.atlas`). Each point is the neuron's top dataset image (or a dot
for big layers), its label on hover, a link to the neuron page. The layout is computed on first
request and cached per app. ``.../atlas.json`` is the JSON twin.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.db import previews
from app.db.atlas import layout_features
from app.db.meaning import unit_summaries
from app.db.schema import Layer
from app.neurons.atlas import Layout, layout
from app.web.atlas_grid import grid_size, snap
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.lookup import find_layer, find_model
from app.web.routing import page
from app.web.state import app_cache, versioned_cache
from app.web.urls import Urls

router = APIRouter()

THUMBS_UP_TO = 1024  # units; bigger layers are drawn as dots
CELL_PX = 48  # sprite pixels per atlas cell
SIDE = 1000  # SVG coordinate box


def _layout(
    request: Request, session: ReadSession, slug: str, layer: Layer
) -> tuple[Layout, list[int]] | None:
    cache: dict[tuple[str, str], Any] = versioned_cache(request, "atlas_layouts", dict)  # issue 14.7
    key = (slug, layer.name)
    if key in cache:
        return cache[key]
    locks: dict[tuple[str, str], threading.Lock] = app_cache(request, "atlas_layout_locks", dict)
    with locks.setdefault(key, threading.Lock()):  # one computation per layer (setdefault is atomic)
        if key in cache:
            return cache[key]
        found = layout_features(session, layer)
        result = (layout(found[1], found[0]), list(range(found[1].shape[0]))) if found else None
        cache[key] = result
        return result


def atlas_data(request: Request, session: ReadSession, slug: str, layer_name: str) -> dict[str, Any]:
    urls: Urls = request.app.state.urls
    layer = find_layer(session, find_model(session, slug), layer_name)
    summaries = unit_summaries(session, layer)
    n_units = layer.n_units
    found = _layout(request, session, slug, layer)
    data: dict[str, Any] = {
        "model": {"slug": slug, "url": urls.model(slug)},
        "layer": {"name": layer_name, "url": urls.layer(slug, layer_name), "n_units": n_units},
        "method": None,
        "features": None,
        "points": [],
        "thumbnails": False,
        "note": None,
    }
    if found is None:
        data["note"] = "This layer has neither neuron directions nor an activation sample to lay out."
        return data
    lay, units = found
    data["method"], data["features"] = lay.method, lay.features
    data["thumbnails"] = len(units) <= THUMBS_UP_TO
    points = []
    for unit, (x, y) in zip(units, lay.xy, strict=True):
        s = summaries.get(unit)
        if s is None:  # not indexed
            continue
        points.append(
            {
                "unit": unit,
                "x": round(float(x), 4),
                "y": round(float(y), 4),
                "label": s.label,
                "url": urls.neuron(slug, layer_name, unit),
                "thumb": urls.blob(s.thumb.sha256, s.thumb.ext) if s.thumb else None,
            }
        )
    # every unit gets its own grid cell next to its layout position: nothing hides anything
    cols = grid_size(len(points))
    for pt, (col, row) in zip(points, snap([(p["x"], p["y"]) for p in points], cols), strict=True):
        pt["col"], pt["row"] = col, row
    data["points"] = points
    data["grid"] = {"cols": cols, "rows": cols}
    data["sprite"] = urls.atlas(slug, layer_name) + ".jpg" if data["thumbnails"] and points else None
    return data


@page(router, "/models/{model}/layers/{layer}/atlas")
async def atlas_page(
    model: str, layer: str, request: Request, session: ReadSession, fmt: str | None
) -> Response:
    """The atlas of one layer (``.json``: each unit's 2-D position, label, link and thumbnail)."""
    urls: Urls = request.app.state.urls
    data = await run_in_threadpool(atlas_data, request, session, model, layer)
    if not data["points"] and data["note"] is None:
        raise HTTPException(404, f"Layer {layer!r} of {model!r} has no indexed neurons.")
    n = max(len(data["points"]), 1)
    tile = max(14.0, min(60.0, SIDE / (n**0.5) * 0.9))
    return respond(
        request,
        "atlas.html",
        data,
        fmt=fmt,
        json_url=urls.atlas(model, layer, "json"),
        html_url=urls.atlas(model, layer),
        context={
            "title": f"Atlas of {layer} · {model}",
            "current_model": model,
            "side": SIDE,
            "tile": round(tile, 1),
            "pad": round(tile / 2 + 4, 1),
        },
    )


@router.get("/models/{model}/layers/{layer}/atlas.jpg")
async def atlas_sprite(model: str, layer: str, request: Request, session: ReadSession) -> Response:
    """All the atlas' thumbnails in one image (one request instead of one per unit)."""
    data = await run_in_threadpool(atlas_data, request, session, model, layer)
    if not data.get("sprite"):
        raise HTTPException(404, f"The atlas of {layer!r} has no thumbnails.")
    shas = {
        pt["unit"]: pt["thumb"].rsplit("/", 1)[-1].split(".")[0] if pt["thumb"] else None
        for pt in data["points"]
    }
    cells = [(pt["col"], pt["row"], shas[pt["unit"]]) for pt in data["points"]]
    cache = app_cache(request, "preview_cache", previews.PreviewCache)
    etag, body = await run_in_threadpool(
        previews.atlas_sprite, session, cells, data["grid"]["cols"], data["grid"]["rows"], CELL_PX, cache
    )
    headers = {"Cache-Control": "public, max-age=3600", "ETag": f'"{etag}"'}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type="image/jpeg", headers=headers)
