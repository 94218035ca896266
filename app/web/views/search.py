"""``/search?q=...&model=...``: the neurons that stand for a piece of text (and ``.json``).

The view parses the request and presents; :mod:`app.live.search` computes (zero-shot neuron
search by evidence or by direction, calibration against null words, reading neurons, the concept
recipe) and :mod:`app.web.recipe` presents the recipe. htmx requests (live results while typing)
get only the results fragment. An empty query gets a help page with suggestions; an over-long query
is truncated to the tokenizer's context, and the page says so.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.live import search as live
from app.live.analysis import DEFAULT_SORT, SORTS
from app.live.context import live_http_error
from app.live.runner import LiveError
from app.live.search_prep import Preparing
from app.web import search_warmup as search_prep
from app.web.analyses import cards_for, moments
from app.web.example_ids import example_ids_in
from app.web.formats import respond
from app.web.recipe import search_recipe
from app.web.routing import page
from app.web.state import app_cache, get_model_context, runner_of
from app.web.urls import Urls

router = APIRouter()


def caches(request: Request) -> live.SearchCaches:
    """The search's per-app caches (what depends on the index is in the model's preparation)."""
    return live.SearchCaches(lru=app_cache(request, "live_search_cache", live.SearchLRU))


def _enrich(request: Request, ctx: Any, *sections: list[dict[str, Any]]) -> None:
    """Each layer's URL and each neuron's card (label, thumbnail, page URL)."""
    urls: Urls = request.app.state.urls
    wanted: dict[str, set[int]] = {}
    for layers in sections:
        for layer in layers:
            wanted.setdefault(layer["name"], set()).update(n["unit"] for n in layer["neurons"])
    cards = cards_for(request, ctx, wanted)
    for layers in sections:
        for layer in layers:
            layer["url"] = urls.layer(ctx.slug, layer["name"])
            for n in layer["neurons"]:
                n.update(cards[(layer["name"], n["unit"])])


def _sorted_url(urls: Urls, text: str, model: str | None, sort: str) -> str:
    return urls.search(text or None, model, sort=None if sort == DEFAULT_SORT else sort)


async def search_data(
    request: Request, q: str | None, model: str | None, sort: str | None = None
) -> tuple[dict[str, Any], int]:
    """The search page's data (= JSON twin) and HTTP status."""
    urls: Urls = request.app.state.urls
    sessions = request.app.state.sessions
    text = live.clean_query(q)
    runner = runner_of(request)
    slug = model or await run_in_threadpool(live.default_model, sessions, runner)
    ctx = await get_model_context(request, slug) if slug else None
    if sort is not None and sort not in SORTS:
        raise HTTPException(422, f"sort must be one of {', '.join(SORTS)}, not {sort[:40]!r}.")
    sort = sort or DEFAULT_SORT
    data: dict[str, Any] = {
        "query": text,
        "sort": sort,
        "sorts": {k: {"label": why, "url": _sorted_url(urls, text, model, k)} for k, why in SORTS.items()},
        "model": {"slug": slug, "url": urls.model(slug)} if ctx else None,
        "used_query": None,
        "truncated": False,
        "note": None,
        "zero_shot": None,
        "reading": None,
        "recipe": None,  # concept recipe (issue 6, app/web/recipe.py)
        "preparing": None,  # while the model's search is prepared (app/live/search_prep.py): progress
        "suggestions": [],
        "explain": {"zero_shot": live.SCORE_HELP, "reading": live.READING_HELP},
    }
    if model and ctx is None:
        raise HTTPException(404, f"No model {model!r} in this index.")
    if not text:
        found = await run_in_threadpool(live.suggestions, sessions, ctx)
        data["suggestions"] = [{"query": s, "url": urls.search(s, slug)} for s in found]
        data["note"] = "Type a word or phrase to find the neurons that stand for it."
        return data, 200
    if runner is None or not runner.running or ctx is None or runner.slug != ctx.slug:
        why = (runner.error if runner is not None and runner.error else None) or (
            "searching by text needs the live model"
            + (f" {slug!r}" if slug else "")
            + ", which this server has not loaded"
        )
        data["note"] = why[0].upper() + why[1:] + "."
        return data, 503
    try:
        prepared = await search_prep.prepared(request, ctx)
    except Preparing as exc:  # the model's search is being prepared in the background: come back
        data["preparing"] = exc.job.status()
        data["note"] = exc.job.message()
        return data, 503
    try:
        found = await live.search(caches(request), runner, ctx, prepared, text, moments(request), sort)
    except LiveError as exc:
        raise live_http_error(exc) from exc
    query = found.query
    data["used_query"], data["truncated"], data["note"] = query.text, query.truncated, query.note
    data.update(found.calibration)
    data["explain"]["confidence"] = live.CONFIDENCE_HELP
    data["recipe"] = await search_recipe(request, ctx.slug, found.recipe)
    await run_in_threadpool(_enrich, request, ctx, found.zero_shot, found.reading)
    data["zero_shot"] = (
        {"layers": found.zero_shot}
        if found.zero_shot
        else {
            "layers": [],
            "error": "This index has no neuron directions (run `conceptscope precompute "
            "activations` to store them).",
        }
    )
    data["reading"] = {"image": found.image, "layers": found.reading}
    return data, 200


@page(router, "/search")
async def search_page(
    request: Request,
    q: str | None = None,
    model: str | None = None,
    sort: str | None = None,
    fmt: str | None = None,
) -> Response:
    """Neurons for a text query (zero-shot neurons and reading neurons); htmx gets the results."""
    urls: Urls = request.app.state.urls
    data, status = await search_data(request, q, model, sort)
    slug = data["model"]["slug"] if data["model"] else model
    thumbs = [
        n.get("thumb")
        for section in (data.get("zero_shot"), data.get("reading"))
        for layer in ((section or {}).get("layers") or [])
        for n in layer["neurons"]
    ]
    sessions = request.app.state.sessions
    ids = {} if fmt == "json" else await run_in_threadpool(example_ids_in, urls, sessions, thumbs)
    response = respond(
        request,
        "search.html",
        data,
        fmt=fmt,
        json_url=urls.search(data["query"] or None, model, fmt="json", sort=sort),
        html_url=urls.search(data["query"] or None, model, sort=sort),
        fragment="_partials/search_results.html",
        context={
            "title": f"“{data['query']}”" if data["query"] else "Search",
            "search_query": data["query"],
            "current_model": slug,
            "example_ids": ids,
        },
        status_code=status,
    )
    if status == 503:
        preparing = data.get("preparing")
        response.headers["Retry-After"] = str(preparing["retry_after"] if preparing else 5)
        response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "HX-Request"
    return response
