"""``/lists?units=…&title=…``: a list of units is a URL; ``/compare?units=…``: 2–4 side by side.

Units are written ``model/layer/unit`` and separated by commas. Each view has a ``.json`` twin.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from app.db.cards import MAX_UNITS, BadUnitRef, UnitCard, UnitRef, parse_refs, unit_cards
from app.web.charts import histogram
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.routing import page
from app.web.urls import Urls

router = APIRouter()

COMPARE_MIN, COMPARE_MAX = 2, 4
MAX_TITLE = 200


def card_data(urls: Urls, ref: UnitRef, card: UnitCard | None) -> dict[str, Any]:
    """A unit's evidence as JSON-able data (``found: false`` when the index lacks it)."""
    if card is None:
        return {"ref": str(ref), "model": ref.model, "layer": ref.layer, "unit": ref.unit, "found": False}
    slug, name, unit = card.model.slug, card.layer.name, card.neuron.unit
    hist = (
        histogram(card.sample, markers={"mean": (card.neuron.mean, "mark-mean")})
        if card.sample is not None
        else None
    )
    return {
        "ref": str(ref),
        "model": slug,
        "layer": name,
        "unit": unit,
        "found": True,
        "url": urls.neuron(slug, name, unit),
        "json": urls.neuron(slug, name, unit, "json"),
        "stats": {
            "mean": card.neuron.mean,
            "std": card.neuron.std,
            "max": card.neuron.max,
            "multimodality": card.neuron.multimodality,
        },
        "labels": [{"label": lb.label, "source": lb.source, "score": lb.score} for lb in card.labels],
        "featurevis": urls.blob(card.featurevis.sha256, card.featurevis.ext) if card.featurevis else None,
        "examples": [
            {
                "rank": i,
                "value": e.value,
                "thumb": urls.blob(e.thumb.sha256, e.thumb.ext),
                "image": {"id": e.image_id, "dataset": e.dataset, "key": e.key, "caption": e.caption},
            }
            for i, e in enumerate(card.examples)
        ],
        "words": [{"word": w.word, "value": w.value} for w in card.words],
        "histogram": hist.as_json() if hist else None,
        "_histogram": hist,
    }


def _refs(units: str | None, limit: int) -> list[UnitRef]:
    try:
        return parse_refs(units, limit)
    except BadUnitRef as exc:
        raise HTTPException(400, str(exc)) from exc


def _strip(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if not k.startswith("_")} for c in cards]


def _page(
    request: Request,
    template: str,
    data: dict[str, Any],
    cards: list[dict[str, Any]],
    fmt: str | None,
    html_url: str,
    json_url: str,
    title: str,
) -> Response:
    if fmt == "json":
        data = {**data, "units": _strip(cards)}
    else:
        data = {**data, "units": cards}
    return respond(
        request, template, data, fmt=fmt, json_url=json_url, html_url=html_url, context={"title": title}
    )


@page(router, "/lists")
def units_list(
    request: Request,
    session: ReadSession,
    fmt: str | None,
    units: str | None = None,
    title: str | None = None,
) -> Response:
    """A list of units with their evidence (``/lists.json`` for JSON); the URL is the list."""
    refs = _refs(units, MAX_UNITS)
    title = (title or "").strip()[:MAX_TITLE] or None
    urls: Urls = request.app.state.urls
    cards = [card_data(urls, ref, card) for ref, card in unit_cards(session, refs)]
    names = [str(r) for r in refs]
    data = {
        "title": title,
        "permalink": urls.units_list(names, title),
        # the JSON twin links to JSON pages, the HTML page to HTML pages
        "compare": urls.compare(names, fmt) if COMPARE_MIN <= len(names) <= COMPARE_MAX else None,
        "max_units": MAX_UNITS,
    }
    return _page(
        request,
        "list.html",
        data,
        cards,
        fmt,
        urls.units_list(names, title),
        urls.units_list(names, title, "json"),
        title or "List of units",
    )


@page(router, "/compare")
def compare(request: Request, session: ReadSession, fmt: str | None, units: str | None = None) -> Response:
    """2–4 units side by side: examples, words, histograms (``/compare.json`` for JSON)."""
    refs = _refs(units, COMPARE_MAX)
    if not COMPARE_MIN <= len(refs) <= COMPARE_MAX:
        raise HTTPException(
            400,
            f"Compare takes {COMPARE_MIN} to {COMPARE_MAX} units as ?units=model/layer/unit,… "
            f"(got {len(refs)}).",
        )
    urls: Urls = request.app.state.urls
    cards = [card_data(urls, ref, card) for ref, card in unit_cards(session, refs, n_examples=8, n_words=10)]
    names = [str(r) for r in refs]
    data = {"permalink": urls.compare(names), "list": urls.units_list(names, fmt=fmt)}
    return _page(
        request,
        "compare.html",
        data,
        cards,
        fmt,
        urls.compare(names),
        urls.compare(names, "json"),
        "Compare " + ", ".join(names),
    )
