"""Concept recipes on the search page: the query as a sparse non-negative mix of neurons.

:func:`search_recipe` is called by :mod:`app.web.views.search` with the recipe the live search
fitted (:func:`app.live.search.recipe_fit`); ``templates/_partials/recipe.html`` draws the result
(``data.recipe``). See :mod:`app.neurons.recipes` for the fit.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.db import search as search_db
from app.live.search import RecipeFit
from app.neurons.recipes import DEFAULT_TERMS
from app.web.urls import Urls

EXPLAIN = (
    "The query's text embedding written as a non-negative combination of at most {n} last-block "
    "neuron directions (greedy pursuit with a non-negative least-squares refit; query and directions "
    "at unit length). fit = cosine between the query and the combination. null = the same fit for "
    "ordinary words nobody asked for (for a phrase, those words in the phrase's last place); a fit "
    "no better than the null's 95th percentile is refused."
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


async def search_recipe(request: Request, slug: str, fit: RecipeFit | None) -> dict[str, Any] | None:
    """The search's recipe (:func:`app.live.search.recipe_fit`) for the page (``None``: no
    directions); a refused recipe shows no terms and says why."""
    if fit is None:
        return None
    out = await run_in_threadpool(_present, request, slug, fit.layer, fit.recipe, DEFAULT_TERMS)
    if out is not None:
        null = fit.null
        out["null"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in null.items()}
        out["refused"] = fit.refused
        if fit.refused:
            out["terms"] = []
            out["note"] = (
                f"No recipe: the fit ({fit.recipe.cosine:.2f}) is no better than the fit of ordinary words "
                f"nobody asked for (95th percentile {null['p95']:.2f} over {null['n']} words)."
            )
    return out
