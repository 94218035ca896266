"""``/models/{model}/multimodal``: the most multimodal neurons, with photo and text evidence.

For a layer (``?layer=``, default: the last block) the ``?n=`` neurons with the highest
multimodality score (:mod:`app.neurons.multimodality`), each with its photo evidence (top dataset
examples that are pictures) beside its text evidence (the concept words it responds to most,
rendered, its top rendered words from ``precompute words`` and top dataset examples that are
text), and a small scatter of picture response vs word response per concept. ``.json`` twin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.db import queries
from app.db.meaning import Profile, concept_profile, multimodal_ranking, top_words, unit_summaries
from app.db.multimodal import EvidenceExample, UnitScale, photo_and_text_examples, unit_scales
from app.web.deps import ReadSession
from app.web.example_ids import example_ids
from app.web.formats import respond
from app.web.lookup import find_layer, find_model
from app.web.routing import page
from app.web.urls import Urls

router = APIRouter()

DEFAULT_N, MAX_N = 24, 200
PHOTOS, TEXTS = 5, 3
SCATTER = 120  # px
NO_SCALE = UnitScale(None, None, None)


EXPLAIN = (
    "score = the smaller of two d′ for the same concept: how far, in the unit's own standard "
    "deviations, it responds more to pictures of the concept than to pictures of other concepts "
    "(d′ pictures), and more to the concept's word printed on a plain background than to the "
    "other words (d′ words). The most multimodal unit of each concept (highest score) comes first, "
    "strongest first: strength = the smaller of the percentiles, in the unit's own dataset "
    "distribution, of its responses to the concept's word and to its pictures, so a unit that "
    "prefers its concept to the others but is hardly excited by it comes late; then the other "
    "units by score. Dead units are left out, and r is the older correlation of the two "
    "preferences across concepts"
)


def _evidence(urls: Urls, items: list[EvidenceExample], scale: UnitScale) -> list[dict[str, Any]]:
    return [
        {"value": e.value, **scale.place(e.value), "caption": e.caption,
         "thumb": urls.blob(e.thumb.sha256, e.thumb.ext)}
        for e in items
    ]  # fmt: skip


def _scatter(profile: Profile, unit: int) -> dict[str, Any] | None:
    x = profile.image_means[:, unit]
    y = profile.word_values[:, unit]
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return None

    def scale(v: np.ndarray) -> np.ndarray:
        lo, hi = float(v[ok].min()), float(v[ok].max())
        return (v - lo) / (hi - lo if hi > lo else 1.0)

    sx, sy = scale(x), scale(y)
    pad = 8
    points = [
        {
            "concept": profile.concepts[i],
            "x": round(pad + float(sx[i]) * (SCATTER - 2 * pad), 1),
            "y": round(SCATTER - pad - float(sy[i]) * (SCATTER - 2 * pad), 1),
            "picture": float(x[i]),
            "word": float(y[i]),
        }
        for i in np.flatnonzero(ok)
    ]
    return {"size": SCATTER, "points": points}


def _own_scale(profile: Profile | None, concept: str | None, unit: int, scale: UnitScale) -> dict[str, Any]:
    """The unit's response to its concept's word and to its concept's pictures, each placed on
    the unit's own scale, and whether either sits below the unit's dataset mean (then d′ says only
    that it prefers this concept to the others, not that the concept excites it)."""
    out: dict[str, Any] = {"concept_word": None, "concept_pictures": None, "below_own_mean": []}
    if profile is None or concept not in (profile.concepts or []):
        return out
    i = profile.concepts.index(concept)
    for key, kind, value in (("concept_word", "word", profile.word_values[i, unit]),
                             ("concept_pictures", "pictures", profile.image_means[i, unit])):  # fmt: skip
        if np.isfinite(value):
            out[key] = {"value": float(value), **scale.place(float(value))}
            if scale.mean is not None and float(value) < scale.mean:
                out["below_own_mean"].append(kind)
    return out


def multimodal_data(
    request: Request, session: ReadSession, slug: str, layer_name: str | None, n: int
) -> dict[str, Any]:
    urls: Urls = request.app.state.urls
    model = find_model(session, slug)
    layers = queries.list_layers(session, model)
    if layer_name is None:
        layer = next((lr for lr in layers if lr.is_last), layers[-1] if layers else None)
        if layer is None:
            raise HTTPException(404, f"Model {slug!r} has no indexed layers.")
    else:
        layer = find_layer(session, model, layer_name)
    ranking = multimodal_ranking(session, layer)[:n]
    rows = [(r.neuron_id, r.unit, r.score) for r in ranking]
    profile = concept_profile(session, layer)
    summaries = unit_summaries(session, layer, [r.unit for r in ranking])
    scales = unit_scales(session, layer, {r.unit: r.neuron_id for r in ranking})
    neurons = []
    for (nid, unit, score), mmu in zip(rows, ranking, strict=True):
        photos, text_examples = photo_and_text_examples(
            session, nid, profile.image_tags if profile else None, PHOTOS, TEXTS
        )
        scale = scales.get(unit, NO_SCALE)
        words = []
        if profile is not None:
            responses = profile.word_values[:, unit]
            for i in np.argsort(-responses)[:TEXTS]:
                thumb = profile.word_thumbs[i] if i < len(profile.word_thumbs) else None
                words.append(
                    {
                        "word": profile.concepts[i],
                        "value": float(responses[i]),
                        **scale.place(float(responses[i])),
                        "thumb": urls.blob(thumb.sha256, thumb.ext) if thumb else None,
                    }
                )
        s = summaries.get(unit)
        own = _own_scale(profile, mmu.concept, unit, scale)
        stored = top_words(session, layer, unit, TEXTS + 2)
        tops = [{"word": w, "value": v, **scale.place(v)} for w, v in stored]
        neurons.append(
            {
                "unit": unit,
                "url": urls.neuron(slug, layer.name, unit),
                "multimodality": score,
                "concept": mmu.concept,
                "picture_d": mmu.picture_d,
                "word_d": mmu.word_d,
                "correlation": mmu.correlation,
                "champion": mmu.champion,
                "strength": None if mmu.strength is None else round(mmu.strength, 1),
                "label": s.label if s else None,
                "label_source": s.label_source if s else None,
                "photos": _evidence(urls, photos, scale),
                "concept_words": words,
                **own,
                "top_words": tops,
                "no_word_excites": bool(tops) and scale.mean is not None and tops[0]["value"] < scale.mean,
                "text_examples": _evidence(urls, text_examples, scale),
                "scatter": _scatter(profile, unit) if profile is not None else None,
            }
        )
    return {
        "model": {"slug": slug, "url": urls.model(slug)},
        "layer": {"name": layer.name, "url": urls.layer(slug, layer.name)},
        "layers": [
            {"name": lr.name, "url": urls.multimodal(slug, layer=lr.name), "current": lr.id == layer.id}
            for lr in layers
        ],
        "n": n,
        "tag_source": profile.source if profile else None,
        "explain": EXPLAIN,
        "neurons": neurons,
        "note": None
        if neurons
        else "No multimodality scores yet: run `conceptscope precompute labels` on this index.",
    }


@page(router, "/models/{model}/multimodal")
async def multimodal_page(
    model: str,
    request: Request,
    session: ReadSession,
    fmt: str | None,
    layer: str | None = None,
    n: int = DEFAULT_N,
) -> Response:
    """The most multimodal neurons of a layer, photo and text evidence side by side (``.json``)."""
    urls: Urls = request.app.state.urls
    n = max(1, min(MAX_N, n))
    data = await run_in_threadpool(multimodal_data, request, session, model, layer, n)
    thumbs = [e["thumb"] for nrn in data["neurons"] for e in (*nrn["photos"], *nrn["text_examples"])]
    ids = {} if fmt == "json" else await run_in_threadpool(example_ids, urls, session, thumbs)
    return respond(
        request,
        "multimodal.html",
        data,
        fmt=fmt,
        json_url=urls.multimodal(model, "json", layer=layer, n=n if n != DEFAULT_N else None),
        html_url=urls.multimodal(model, layer=layer, n=n if n != DEFAULT_N else None),
        context={"title": f"Multimodal neurons · {model}", "current_model": model, "example_ids": ids},
    )
