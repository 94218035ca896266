"""``/models/{model}/layers/{layer}``: a layer's neurons as a paged, sortable, filterable grid.

Query: ``page``, ``per_page``, ``sort`` (unit | max | mean | std | label_score | multimodality),
``order`` (asc | desc), ``q`` (label text). An htmx request gets only the grid fragment.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.db import queries
from app.web import routing
from app.web.deps import ReadSession
from app.web.formats import respond
from app.web.lookup import find_layer, find_model

router = APIRouter()

DEFAULT_PER_PAGE = 60


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _auc(raw: str | None) -> float | None:
    """``min_auc`` (issue 16 label filter, e.g. 0.9), or ``None`` when absent or not in [0, 1]."""
    try:
        value = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


@routing.page(router, "/models/{model}/layers/{layer}")
def layer_page(
    model: str,
    layer: str,
    request: Request,
    session: ReadSession,
    fmt: str | None,
    page: str | None = None,
    per_page: str | None = None,
    sort: str | None = None,
    order: str | None = None,
    q: str | None = None,
    min_auc: str | None = None,
) -> Response:
    """A page of a layer's neurons (``.../layers/{layer}.json`` for JSON)."""
    auc_floor = _auc(min_auc)
    model_row = find_model(session, model)
    layer_row = find_layer(session, model_row, layer)
    urls = request.app.state.urls
    listing = queries.list_neurons(
        session,
        layer_row,
        q=(q or "").strip() or None,
        sort=sort or "unit",
        desc=None if order not in ("asc", "desc") else order == "desc",
        page=_int(page, 1),
        per_page=_int(per_page, DEFAULT_PER_PAGE),
        min_auc=auc_floor,
    )
    slug = model_row.slug
    state = {
        "sort": listing.sort,
        "order": "desc" if listing.desc else "asc",
        "q": listing.q,
        "per_page": listing.per_page if listing.per_page != DEFAULT_PER_PAGE else None,
        "min_auc": auc_floor,
    }

    def page_url(n: int, fmt_: str | None = None) -> str:
        return urls.layer(slug, layer_row.name, fmt_, **state, page=n if n > 1 else None)

    data = {
        "model": {"slug": slug, "name": model_row.name, "url": urls.model(slug)},
        "layer": {
            "name": layer_row.name,
            "kind": layer_row.kind,
            "n_units": layer_row.n_units,
            "grid": [layer_row.grid_h, layer_row.grid_w],
            "is_last": layer_row.is_last,
        },
        "query": {**state, "per_page": listing.per_page},
        "page": listing.page,
        "pages": listing.pages,
        "total": listing.total,
        "sort_keys": [
            key
            for key in listing.sort_keys
            if (key not in ("label_score", "label_auc") or listing.has_labels)
            and (key != "multimodality" or listing.has_multimodality)
        ],
        "has_labels": listing.has_labels,
        # the JSON twin links to JSON pages, the HTML page to HTML pages
        "prev_page": page_url(listing.page - 1, fmt) if listing.page > 1 else None,
        "next_page": page_url(listing.page + 1, fmt) if listing.page < listing.pages else None,
        "neurons": [
            {
                "unit": row.unit,
                "mean": row.mean,
                "std": row.std,
                "max": row.max,
                "multimodality": row.multimodality,
                "label": row.label,
                "label_source": row.label_source,
                "label_score": row.label_score,
                "label_auc": row.label_auc,
                "label_precision": row.label_precision,
                "label_weak": row.label_weak,
                "url": urls.neuron(slug, layer_row.name, row.unit),
                "json": urls.neuron(slug, layer_row.name, row.unit, "json"),
                "thumb": urls.blob(row.thumb.sha256, row.thumb.ext) if row.thumb else None,
            }
            for row in listing.rows
        ],
    }
    return respond(
        request,
        "layer.html",
        data,
        fmt=fmt,
        json_url=page_url(listing.page, "json"),
        html_url=page_url(listing.page),
        fragment="_partials/neuron_grid.html",
        context={
            "title": f"{layer_row.name} · {slug}",
            "current_model": slug,
            "base_url": urls.layer(slug, layer_row.name),
        },
    )
