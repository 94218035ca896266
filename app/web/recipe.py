"""Concept recipes on the search page: the query as a sparse non-negative mix of neurons.

:func:`search_recipe` is called by :mod:`app.web.views.search` with the query's text embedding
and the model's prepared search data; ``templates/_partials/recipe.html`` draws the result
(``data.recipe``). See :mod:`app.neurons.recipes` for the fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.db import search as search_db
from app.live.search_prep import Prepared
from app.neurons.recipes import DEFAULT_TERMS, fit_recipe
from app.web.urls import Urls

EXPLAIN = (
    "The query's text embedding, with the mean embedding of the label vocabulary subtracted, written as "
    "a non-negative combination of at most {n} last-block neuron directions (greedy pursuit with a "
    "non-negative least-squares refit; query and directions at unit length). fit = cosine between the "
    "query and the combination. null = the same fit for ordinary words nobody asked for; a fit no "
    "better than the null's 95th percentile is refused."
)


def _present(
    request: Request, slug: str, layer_name: str, recipe: Any, n_terms: int
) -> dict[str, Any] | None:
    urls: Urls = request.app.state.urls
    with request.app.state.sessions() as session:
        summaries = search_db.layer_summaries(session, slug, layer_name, [t.unit for t in recipe.terms])
    terms = []
    for t in recipe.terms:
        s = summaries.get(t.unit)
        terms.append(
            {
                "unit": t.unit,
                "weight": round(t.weight, 4),
                "cosine": round(t.cosine, 4),
                "label": s.label if s else None,
                "thumb": urls.blob(s.thumb.sha256, s.thumb.ext) if s and s.thumb else None,
                "url": urls.neuron(slug, layer_name, t.unit),
            }
        )
    return {
        "layer": layer_name,
        "layer_url": urls.layer(slug, layer_name),
        "terms": terms,
        "cosine": round(recipe.cosine, 4),
        "centred": recipe.centred,
        "explain": EXPLAIN.format(n=n_terms),
    }


async def search_recipe(
    request: Request, slug: str, embedding: np.ndarray, prepared: Prepared
) -> dict[str, Any] | None:
    """The recipe of ``embedding`` over the model's last-block directions (``None``: no directions).
    The vocabulary centre and the null words' fits come prepared (:mod:`app.live.search_prep`)."""
    if not prepared.directions:
        return None
    layer_name, layer = next(iter(prepared.directions.items()))
    n_terms, centre, null = DEFAULT_TERMS, prepared.recipe_centre, prepared.recipe_null
    recipe = await run_in_threadpool(
        fit_recipe, embedding, layer.directions, max_terms=n_terms, centre=centre
    )
    out = await run_in_threadpool(_present, request, slug, layer_name, recipe, n_terms)
    if out is not None:
        out["null"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in null.items()}
        out["refused"] = bool(null["n"]) and recipe.cosine <= null["p95"]
        if out["refused"]:
            out["terms"] = []
            out["note"] = (
                f"No recipe: the fit ({recipe.cosine:.2f}) is no better than the fit of ordinary words "
                f"nobody asked for (95th percentile {null['p95']:.2f} over {null['n']} words)."
            )
    return out
