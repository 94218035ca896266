"""Unfurls and embeds: link-preview PNGs, ``/embed/…`` cards for iframes, and oEmbed.

* ``/preview/models/{m}/layers/{l}/neurons/{u}.png`` and ``/preview/analyses/{id}.png``: the
  OpenGraph / Twitter card images (rendered by :mod:`app.db.previews`, read-only, ETag).
* ``/embed/models/{m}/layers/{l}/neurons/{u}`` and ``/embed/analyses/{id}``: compact cards, the
  only pages that may be framed by other origins (the security headers allow it under /embed/).
* ``/-/oembed?url=…``: oEmbed (type ``rich``) for neuron and analysis URLs of this server.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from app.db import previews
from app.db.cards import UnitRef, unit_card
from app.web.deps import ReadSession
from app.web.errors import NotFound
from app.web.etags import etag_matches
from app.web.formats import SafeJSONResponse, html_page
from app.web.lookup import parse_unit
from app.web.state import app_cache
from app.web.urls import Urls

router = APIRouter()

PREVIEW_CACHE = "public, max-age=3600"
EMBED_WIDTH, EMBED_HEIGHT = 480, 360
_NEURON_PATH = re.compile(r"/models/([^/]+)/layers/([^/]+)/neurons/([0-9]{1,9})")
_ANALYSIS_PATH = re.compile(r"/analyses/([A-Za-z0-9_-]{1,64})")


def _png(request: Request, found: tuple[str, bytes]) -> Response:
    etag, data = found
    headers = {"Cache-Control": PREVIEW_CACHE, "ETag": f'"{etag}"'}
    if etag_matches(request.headers.get("if-none-match"), f'"{etag}"'):
        return Response(status_code=304, headers=headers)
    return Response(content=data, media_type="image/png", headers=headers)


def _preview_cache(request: Request) -> previews.PreviewCache:
    return app_cache(request, "preview_cache", previews.PreviewCache)


def _ref(model: str, layer: str, unit: str) -> UnitRef:
    return UnitRef(model, layer, parse_unit(unit))


@router.get("/preview/models/{model}/layers/{layer}/neurons/{unit}.png")
def neuron_preview(model: str, layer: str, unit: str, request: Request, session: ReadSession) -> Response:
    """A neuron's link-preview image (1200×630 PNG)."""
    found = previews.neuron_preview(session, _ref(model, layer, unit), _preview_cache(request))
    if found is None:
        raise NotFound(f"No unit {unit} of layer {layer!r} of model {model!r} in this index.")
    return _png(request, found)


@router.get("/preview/analyses/{name}.png")
def analysis_preview(name: str, request: Request, session: ReadSession) -> Response:
    """An analysis' link-preview image (1200×630 PNG)."""
    found = previews.get_analysis(session, name)
    if found is None:
        raise NotFound(f"No stored analysis {name[:80]!r}.")
    return _png(request, previews.analysis_preview(session, *found, _preview_cache(request)))


def _embed(request: Request, template: str, context: dict[str, Any]) -> Response:
    response = html_page(request, template, context)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@router.get("/embed/models/{model}/layers/{layer}/neurons/{unit}", include_in_schema=False)
def embed_neuron(model: str, layer: str, unit: str, request: Request, session: ReadSession) -> Response:
    """A compact neuron card for an iframe."""
    urls: Urls = request.app.state.urls
    card = unit_card(session, _ref(model, layer, unit), n_examples=6, n_words=5)
    if card is None:
        raise NotFound(f"No unit {unit} of layer {layer!r} of model {model!r} in this index.")
    slug, name, u = card.model.slug, card.layer.name, card.neuron.unit
    return _embed(
        request,
        "embed_neuron.html",
        {
            "card": card,
            "title_label": previews.title_of(session, card),  # the unit summary's title label
            "page_url": urls.neuron(slug, name, u),
            "examples": [(urls.blob(e.thumb.sha256, e.thumb.ext), e) for e in card.examples],
            "featurevis": urls.blob(card.featurevis.sha256, card.featurevis.ext) if card.featurevis else None,
            "title": f"{name}/{u} · {slug}",
        },
    )


@router.get("/embed/analyses/{name}", include_in_schema=False)
def embed_analysis(name: str, request: Request, session: ReadSession) -> Response:
    """A compact analysis card for an iframe."""
    urls: Urls = request.app.state.urls
    found = previews.get_analysis(session, name)
    if found is None:
        raise NotFound(f"No stored analysis {name[:80]!r}.")
    row, slug = found
    layer, neurons = previews.analysis_neurons(session, row, slug, 6)
    for n in neurons:
        n["url"] = urls.neuron(slug, layer, n["unit"])
        n["thumb_url"] = urls.blob(n["thumb"].sha256, n["thumb"].ext) if n["thumb"] else None
    return _embed(
        request,
        "embed_analysis.html",
        {
            "analysis": row,
            "slug": slug,
            "layer": layer,
            "neurons": neurons,
            "page_url": urls.analysis(row.id),
            "image_url": urls.blob(row.image_sha256, "jpg") if row.image_sha256 else None,
            "title": f"Analysis {row.id[:8]} · {slug}",
        },
    )


def _absolute(request: Request, path: str) -> str:
    return str(request.base_url).rstrip("/") + path


@router.get("/-/oembed")
def oembed(
    request: Request,
    session: ReadSession,
    url: str | None = None,
    format: str = "json",  # noqa: A002 - the oEmbed parameter's name
    maxwidth: str | None = None,
    maxheight: str | None = None,
) -> Response:
    """oEmbed (``type: rich``) for a neuron or analysis URL of this server."""
    if format != "json":  # a 4xx: oEmbed's 501 reads as a server error to clients and monitors
        raise HTTPException(
            400, "Only format=json is supported; oEmbed's 501 is not used because it reads as a server error."
        )
    if not url:
        raise HTTPException(
            400, "Give the page to embed as ?url=… (a neuron or analysis URL of this server)."
        )
    urls: Urls = request.app.state.urls
    path = urlsplit(url).path
    if urls.base and path.startswith(urls.base):
        path = path[len(urls.base) :]
    width, height = EMBED_WIDTH, EMBED_HEIGHT
    for text, cap in ((maxwidth, "w"), (maxheight, "h")):
        if text is not None:
            if not text.isascii() or not text.isdigit() or not 0 < int(text) < 10_000:
                raise HTTPException(400, "maxwidth and maxheight are positive integers.")
            if cap == "w":
                width = min(width, int(text))
            else:
                height = min(height, int(text))
    if match := _NEURON_PATH.fullmatch(path.removesuffix(".json")):
        model, layer, unit = match.groups()
        ref = UnitRef(unquote(model), unquote(layer), int(unit))
        card = unit_card(session, ref, n_examples=1, n_words=0)
        if card is None:
            raise NotFound(f"No neuron at {url[:200]!r}.")
        slug, name, u = card.model.slug, card.layer.name, card.neuron.unit
        label = found.label if (found := previews.title_of(session, card)) else None
        title = f"{name}/{u} · {slug}" + (f": {label}" if label else "")
        embed_url = _absolute(request, urls.embed_neuron(slug, name, u))
        thumb = _absolute(request, urls.preview(slug, name, u))
    elif match := _ANALYSIS_PATH.fullmatch(path.removesuffix(".json")):
        found = previews.get_analysis(session, match.group(1))
        if found is None:
            raise NotFound(f"No stored analysis at {url[:200]!r}.")
        row, slug = found
        title = f"Analysis {row.id[:8]} · {slug}"
        embed_url = _absolute(request, urls.embed_analysis(row.id))
        thumb = _absolute(request, urls.analysis_preview(row.id))
    else:
        raise NotFound(f"{url[:200]!r} is not a neuron or analysis page of this server.")
    html = (
        f'<iframe src="{embed_url}" width="{width}" height="{height}" loading="lazy" '
        f'style="border:1px solid #e3e4e8;border-radius:6px" title="{_attr(title)}"></iframe>'
    )
    return SafeJSONResponse(
        {
            "version": "1.0",
            "type": "rich",
            "provider_name": "Conceptscope",
            "provider_url": _absolute(request, urls.home()),
            "title": title,
            "html": html,
            "width": width,
            "height": height,
            "thumbnail_url": thumb,
            "thumbnail_width": previews.WIDTH,
            "thumbnail_height": previews.HEIGHT,
        },
        headers={"Access-Control-Allow-Origin": "*"},
    )


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
