"""``/typographic``: the typographic attack lab.

Pick a dataset image (``?image=ID``) or upload one (``POST /typographic``, stored as a regular
analysis and then addressed as ``?analysis=ID``), type a word, choose placement, size and colour;
the page shows zero-shot probabilities over the user's classes before and after writing the
word, and the neurons whose activations changed most. Every parameter is in the query string,
so the page URL is the permalink; ``/typographic.json`` is the JSON twin.

The view parses and presents; :mod:`app.live.typographic` computes (through the live runner;
the word is drawn on the model's centre-square view) and reads the index through ``app.db``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import MIME_EXT
from app.live import typographic as lab
from app.neurons import activations as core
from app.neurons.typographic import (
    DEFAULT_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    NAMED_COLOURS,
    PLACEMENTS,
    Attack,
    AttackError,
)
from app.web import analyses, csrf  # analyses: the analysis pages' upload path (compute + store)
from app.web.formats import respond
from app.web.routing import page
from app.web.state import live_status, require_runner, runner_of
from app.web.uploads import UploadError, centre_square, read_body_limited, replay_request
from app.web.urls import Urls

router = APIRouter()

BLANK_INK = lab.BLANK_INK
verdict = lab.verdict


def _params(request: Request) -> dict[str, str]:
    q = request.query_params
    keys = ("image", "analysis", "word", "placement", "size", "colour", "classes", "control", "pick")
    return {k: q.get(k, "").strip() for k in keys if q.get(k, "").strip()}


def _form(request: Request, params: dict[str, str], model_slug: str | None) -> dict[str, Any]:
    urls: Urls = request.app.state.urls
    sessions = request.app.state.sessions
    chosen, suggestion = lab.pick_examples(sessions, params.get("pick"))
    examples = [
        {"id": r.id, "caption": r.caption or r.key, "thumb": urls.blob(r.sha256, MIME_EXT.get(r.mime, "bin"))}
        for r in chosen
    ]
    return {
        "live": live_status(request),
        "examples": examples,
        "suggestion": (
            {**suggestion, "url": urls.typographic(**{k: v for k, v in suggestion.items() if k != "caption"})}
            if suggestion
            else None
        ),
        "options": {
            "placements": list(PLACEMENTS),
            "colours": list(NAMED_COLOURS),
            "size": {
                "min": MIN_SIZE,
                "max": MAX_SIZE,
                "default": DEFAULT_SIZE,
                "unit": "% of the image side",
            },
        },
        "post": urls.typographic(),
        "params": params,
        "classes": lab.classes(sessions, model_slug, core.parse_class_names(params.get("classes"))),
    }


def _present(
    urls: Urls, slug: str, r: lab.AttackResult, attack: Attack, classes: list[str]
) -> dict[str, Any]:
    """The attack's result as the page and its JSON twin show it."""

    def card(name: str, c: Any, s: Any) -> dict[str, Any]:
        return {
            "unit": c.unit,
            "before": c.before,
            "after": c.after,
            "delta": c.delta,
            "delta_sigma": c.delta_sigma,
            "url": urls.neuron(slug, name, c.unit),
            "label": s.label if s else None,
            "thumb": urls.blob(s.thumb.sha256, s.thumb.ext) if s and s.thumb else None,
        }

    p0, p1 = r.p_before, r.p_after
    ranked = sorted(range(len(classes)), key=lambda i: -p1[i])
    top0, top1 = int(np.argmax(p0)), int(np.argmax(p1))
    return {
        "model": {"slug": slug, "url": urls.model(slug)},
        "images": {"before": r.before, "after": r.after, "side": r.side},
        "zero_shot": {
            "prompts": r.prompts,
            "logit_scale": r.logit_scale,
            "classes": [
                {
                    "class": classes[i],
                    "before": float(p0[i]),
                    "after": float(p1[i]),
                    "delta": float(p1[i] - p0[i]),
                }
                for i in ranked
            ],
            "top_before": classes[top0],
            "top_after": classes[top1],
            "flipped": top0 != top1,
            **lab.verdict(attack.word, classes, top0, top1),
        },
        "control": r.control,
        "changes": [
            {
                "layer": ch.layer,
                "url": urls.layer(slug, ch.layer),
                "rose": [card(ch.layer, c, s) for c, s in ch.rose],
                "fell": [card(ch.layer, c, s) for c, s in ch.fell],
            }
            for ch in r.changes
        ],
        "change_unit": "σ = the neuron's standard deviation over the indexed dataset",
    }


async def run_attack(
    request: Request, image: Any, attack: Attack, classes: list[str], control: str | None = None
) -> dict[str, Any]:
    """Before/after zero-shot probabilities and neuron changes (needs the live runner)."""
    runner = require_runner(request)
    result = await lab.run_attack(
        request.app.state.sessions, runner, image, attack, classes, control, centre_square=centre_square
    )
    return _present(request.app.state.urls, runner.slug, result, attack, classes)


@page(router, "/typographic")
async def typographic_page(request: Request, fmt: str | None = None) -> Response:
    """The lab: picker and form; with ``image``/``analysis`` + ``word``: the attack's result."""
    urls: Urls = request.app.state.urls
    params = _params(request)
    runner = runner_of(request)
    slug = runner.slug if runner is not None else None
    data = await run_in_threadpool(_form, request, params, slug)
    data["permalink"] = urls.typographic(**params)
    data["result"] = None
    data["source"] = None
    if "image" in params or "analysis" in params:
        try:
            found = await run_in_threadpool(
                lab.source_image, request.app.state.sessions, params.get("image"),
                None if "image" in params else params.get("analysis"),
            )  # fmt: skip
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        assert found is not None
        image, about = found
        data["source"] = {**about, "preview": lab.png_uri(image.copy().resize((min(image.width, 256),) * 2))}
        if params.get("word"):
            try:
                attack = Attack.parse(params.get("word"), params.get("placement"), params.get("size"),
                                      params.get("colour"))  # fmt: skip
            except AttackError as exc:
                raise HTTPException(422, str(exc)) from exc
            data["attack"] = {"word": attack.word, "placement": attack.placement, "size": attack.size,
                              "colour": attack.colour}  # fmt: skip
            data["result"] = await run_attack(request, image, attack, data["classes"], params.get("control"))
    if fmt == "json" and data["source"] is not None:  # the picker's examples: only on the picker's JSON
        data["examples"] = None
        data["examples_url"] = urls.typographic("json", pick=params.get("pick"))
    return respond(
        request,
        "typographic.html",
        data,
        fmt=fmt,
        json_url=urls.typographic("json", **params),
        html_url=urls.typographic(**params),
        context={"title": "Typographic attack lab", "error": None},
    )


@router.post("/typographic")
async def typographic_upload(request: Request) -> Response:
    """Upload an image (multipart ``image``) with the attack fields; 303 to the permalink."""
    settings: Settings = request.app.state.settings
    urls: Urls = request.app.state.urls
    try:
        body = await read_body_limited(request, settings.max_upload_bytes)
        try:
            form = await replay_request(request, body).form(max_files=2, max_fields=20)
        except Exception as exc:
            raise UploadError(400, f"Could not read the form ({type(exc).__name__}).") from exc
        try:
            item = form.get("image")
            data = await item.read() if item is not None and not isinstance(item, str) else b""
            fields = {
                k: str(form.get(k) or "").strip() for k in ("word", "placement", "size", "colour", "classes")
            }
            csrf.verify(request, form)  # app.web.csrf: browser forms echo the visitor's token
        finally:
            await form.close()
        if not data:
            raise UploadError(422, "No image in the upload: choose a file for the field 'image'.")
        computed = await analyses.compute(request, analyses.Upload(data, [], 1))
        stored = await analyses.store(request, computed)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    if not stored:
        raise HTTPException(
            503, "This server does not store uploads (--no-store), so an uploaded image has no permalink; "
            "pick a dataset image instead.",
        )  # fmt: skip
    query = {k: v for k, v in fields.items() if v}
    return RedirectResponse(urls.typographic(analysis=computed.id, **query), status_code=303)
