"""``/typographic``: the typographic attack lab.

Pick a dataset image (``?image=ID``) or upload one (``POST /typographic``, stored as a regular
analysis and then addressed as ``?analysis=ID``), type a word, choose placement, size and colour;
the page shows zero-shot probabilities over the user's classes before and after writing the
word, and the neurons whose activations changed most. Every parameter is in the query string,
so the page URL is the permalink; ``/typographic.json`` is the JSON twin.

Model work goes through the live runner; the word is drawn on the model's centre-square view.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from PIL import Image as PILImage
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import MIME_EXT
from app.db.meaning import concepts_of, unit_summaries
from app.db.schema import Analysis, Blob, Image, Layer, Model, Neuron
from app.live.runner import LiveError
from app.neurons import activations as core
from app.neurons import zeroshot
from app.neurons.typographic import (
    DEFAULT_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    NAMED_COLOURS,
    PLACEMENTS,
    Attack,
    AttackError,
    activation_changes,
    write_word,
)
from app.web import analyses as live  # the analysis pages' upload + live-model path
from app.web import csrf
from app.web.formats import respond
from app.web.uploads import UploadError, centre_square, read_body_limited, replay_request
from app.web.urls import Urls

router = APIRouter()

N_EXAMPLES = 12
N_CHANGES = 8
DEFAULT_CLASSES = ["apple", "iPod", "library", "pizza", "toaster", "dog", "piggy bank", "text"]
MAX_VOCAB_AS_CLASSES = 30


# ------------------------------------------------------------------------------ inputs


def _params(request: Request) -> dict[str, str]:
    q = request.query_params
    keys = ("image", "analysis", "word", "placement", "size", "colour", "classes", "control", "pick")
    return {k: q.get(k, "").strip() for k in keys if q.get(k, "").strip()}


def _source_image(request: Request, params: dict[str, str]) -> tuple[PILImage.Image, dict[str, Any]] | None:
    """The picked image (dataset image or stored upload) and a description, or ``None``."""
    with request.app.state.sessions() as session:
        if "image" in params:
            if not params["image"].isdigit():
                raise HTTPException(404, f"{params['image']!r} is not a dataset image id.")
            row = session.execute(
                select(Image.id, Image.caption, Image.key, Blob.data)
                .join(Blob, Blob.sha256 == Image.thumb_sha256)
                .where(Image.id == int(params["image"]))
            ).first()
            if row is None:
                raise HTTPException(404, f"There is no dataset image {params['image']}.")
            about = {"kind": "dataset image", "id": row.id, "caption": row.caption or row.key}
            data = bytes(row.data)
        elif "analysis" in params:
            row = session.execute(
                select(Analysis.id, Blob.data)
                .join(Blob, Blob.sha256 == Analysis.image_sha256)
                .where(Analysis.id == params["analysis"])
            ).first()
            if row is None:
                raise HTTPException(
                    404,
                    f"No stored upload {params['analysis']!r} (old uploads are evicted); upload it again.",
                )
            about = {"kind": "upload", "id": row.id, "caption": "uploaded image"}
            data = bytes(row.data)
        else:
            return None
    image = PILImage.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB"), about


def _classes(request: Request, model_slug: str | None, text: str | None) -> list[str]:
    names = core.parse_class_names(text)
    if names:
        return names
    if model_slug:
        with request.app.state.sessions() as session:
            model = session.scalar(select(Model).where(Model.slug == model_slug))
            vocab = concepts_of(session, model) if model else []
        if 2 <= len(vocab) <= MAX_VOCAB_AS_CLASSES:
            return vocab
    return list(DEFAULT_CLASSES)


def _examples(
    request: Request, urls: Urls, pick: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
    """Dataset thumbnails to pick from (plain objects first when the dataset says so), and a
    suggested attack when the images carry colour ground truth (the demo world)."""
    with request.app.state.sessions() as session:
        rows = session.execute(
            select(Image.id, Image.caption, Image.key, Image.meta, Blob.sha256, Blob.mime)
            .join(Blob, Blob.sha256 == Image.thumb_sha256)
            .order_by(Image.position, Image.id)
            .limit(600)
        ).all()
    objects = [r for r in rows if isinstance(r.meta, dict) and r.meta.get("modality") == "object"]
    pool = objects or rows
    if pick:
        needle = pick.lower()
        pool = [r for r in rows if needle in (r.caption or r.key or "").lower()]
    else:  # one image of each colour first (so red objects are always on offer), then the rest
        seen: set[str] = set()
        firsts = []
        for r in pool:
            colour = r.meta.get("colour") if isinstance(r.meta, dict) else None
            if colour and colour not in seen:
                seen.add(colour)
                firsts.append(r)
        pool = firsts + [r for r in pool if r not in firsts]
    chosen = pool[:N_EXAMPLES]
    examples = [
        {"id": r.id, "caption": r.caption or r.key, "thumb": urls.blob(r.sha256, MIME_EXT.get(r.mime, "bin"))}
        for r in chosen
    ]
    colours = sorted({r.meta["colour"] for r in objects if r.meta.get("colour")})
    suggestion = None
    red = next((r for r in objects if r.meta.get("colour") == "red"), None)
    if red is not None and "blue" in colours:
        suggestion = {
            "image": str(red.id),
            "word": "blue",
            "placement": "label",
            "classes": ", ".join(colours),
            "caption": red.caption or red.key,
        }
    return examples, suggestion


def _stds(request: Request, slug: str) -> dict[str, np.ndarray]:
    with request.app.state.sessions() as session:
        rows = session.execute(
            select(Layer.name, Layer.n_units, Neuron.unit, Neuron.std)
            .join(Neuron, Neuron.layer_id == Layer.id)
            .join(Model, Model.id == Layer.model_id)
            .where(Model.slug == slug)
        ).all()
    out: dict[str, np.ndarray] = {}
    for name, n_units, unit, std in rows:
        arr = out.setdefault(name, np.full(n_units, np.nan))
        if unit < n_units:
            arr[unit] = std
    return out


def _png_uri(image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ computing


async def run_attack(
    request: Request, image: PILImage.Image, attack: Attack, classes: list[str], control: str | None = None
) -> dict[str, Any]:
    """Before/after zero-shot probabilities and neuron changes (needs the live runner)."""
    runner = live.require_runner(request)
    size = runner.loaded.image_size
    before_img = await run_in_threadpool(centre_square, image, size)
    after_img = await run_in_threadpool(write_word, before_img, attack)
    blank_img = None
    if control == "blank" and attack.placement == "label":  # the same sticker, its text invisible
        blank = Attack(attack.word, "label", attack.size, BLANK_INK)
        blank_img = await run_in_threadpool(write_word, before_img, blank)
    try:
        before = await runner.analyze(before_img, top_k=1)
        after = await runner.analyze(after_img, top_k=1)
        blank_acts = await runner.analyze(blank_img, top_k=1) if blank_img is not None else None
        class_emb = await runner.submit(zeroshot.encode_concepts, classes)
    except LiveError as exc:
        raise live.live_http_error(exc) from exc
    templates = list(zeroshot.templates_for(runner.loaded))
    scale = runner.logit_scale
    p0 = zeroshot.zero_shot(before.embedding, class_emb, scale)
    p1 = zeroshot.zero_shot(after.embedding, class_emb, scale)
    stds = await run_in_threadpool(_stds, request, runner.slug)
    changes = activation_changes(before.values, after.values, stds, N_CHANGES)
    urls: Urls = request.app.state.urls

    def cards() -> list[dict[str, Any]]:
        out = []
        with request.app.state.sessions() as session:
            model = session.scalar(select(Model).where(Model.slug == runner.slug))
            layers = {lr.name: lr for lr in session.scalars(select(Layer).where(Layer.model_id == model.id))}
            for name in sorted(changes, key=lambda n: -layers[n].position if n in layers else 0):
                layer = layers.get(name)
                both = changes[name]["rose"] + changes[name]["fell"]
                summaries = unit_summaries(session, layer, [c.unit for c in both]) if layer else {}

                def card(c: Any, name: str = name, summaries: dict[int, Any] = summaries) -> dict[str, Any]:
                    s = summaries.get(c.unit)
                    return {
                        "unit": c.unit,
                        "before": c.before,
                        "after": c.after,
                        "delta": c.delta,
                        "delta_sigma": c.delta_sigma,
                        "url": urls.neuron(runner.slug, name, c.unit),
                        "label": s.label if s else None,
                        "thumb": urls.blob(s.thumb.sha256, s.thumb.ext) if s and s.thumb else None,
                    }

                out.append(
                    {
                        "layer": name,
                        "url": urls.layer(runner.slug, name),
                        "rose": [card(c) for c in changes[name]["rose"]],
                        "fell": [card(c) for c in changes[name]["fell"]],
                    }
                )
        return out

    ranked = sorted(range(len(classes)), key=lambda i: -p1[i])
    top0, top1 = int(np.argmax(p0)), int(np.argmax(p1))
    control_result = None
    if blank_acts is not None:
        pb = zeroshot.zero_shot(blank_acts.embedding, class_emb, scale)
        control_result = {
            "kind": "blank label: the same sticker without the word",
            "image": _png_uri(blank_img),
            "top": classes[int(np.argmax(pb))],
            "probabilities": {classes[i]: float(pb[i]) for i in range(len(classes))},
        }
    return {
        "model": {"slug": runner.slug, "url": urls.model(runner.slug)},
        "images": {"before": _png_uri(before_img), "after": _png_uri(after_img), "side": size},
        "zero_shot": {
            "prompts": templates,
            "logit_scale": scale,
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
            **verdict(attack.word, classes, top0, top1),
        },
        "control": control_result,
        "changes": await run_in_threadpool(cards),
        "change_unit": "σ = the neuron's standard deviation over the indexed dataset",
    }


# ------------------------------------------------------------------------------ routes

BLANK_INK = "#fafaf5"  # the label sticker's colour (app.neurons.typographic.write_word)


def verdict(word: str, classes: list[str], top0: int, top1: int) -> dict[str, Any]:
    """Did writing ``word`` make the model predict it? ``attack_succeeded`` is ``None`` when the
    word is not among the classes (the attack cannot succeed) or already was the prediction."""
    lowered = [c.strip().lower() for c in classes]
    target = lowered.index(word.strip().lower()) if word.strip().lower() in lowered else None
    before, after = classes[top0], classes[top1]
    if target is None:
        moved = f"moved from “{before}” to “{after}”" if top0 != top1 else f"stays “{after}”"
        return {"attack_succeeded": None,
                "verdict": f"“{word}” is not among the classes, so it cannot win; the prediction {moved}."}
    if top0 == target:
        return {"attack_succeeded": None, "verdict": f"The image was already classified as “{before}”."}
    if top1 == target:
        text = f"The attack worked: the prediction moved from “{before}” to the written word “{after}”."
        return {"attack_succeeded": True, "verdict": text}
    if top0 != top1:
        return {"attack_succeeded": False, "verdict": (
            f"The attack failed: the prediction moved from “{before}” to “{after}”, not to the written "
            f"word “{classes[target]}”.")}
    return {"attack_succeeded": False, "verdict": f"The attack failed: the prediction stays “{after}”."}


def _form(request: Request, params: dict[str, str], model_slug: str | None) -> dict[str, Any]:
    urls: Urls = request.app.state.urls
    examples, suggestion = _examples(request, urls, params.get("pick"))
    return {
        "live": live.live_status(request),
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
        "classes": _classes(request, model_slug, params.get("classes")),
    }


async def _page(
    request: Request, fmt: str | None, *, error: str | None = None, status: int = 200
) -> Response:
    urls: Urls = request.app.state.urls
    params = _params(request)
    runner = live.runner_of(request)
    slug = runner.slug if runner is not None else None
    data = await run_in_threadpool(_form, request, params, slug)
    data["permalink"] = urls.typographic(**params)
    data["result"] = None
    data["source"] = None
    if error is None and ("image" in params or "analysis" in params):
        found = await run_in_threadpool(_source_image, request, params)
        assert found is not None
        image, about = found
        data["source"] = {**about, "preview": _png_uri(image.copy().resize((min(image.width, 256),) * 2))}
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
        context={"title": "Typographic attack lab", "error": error},
        status_code=status,
    )


@router.get("/typographic")
async def typographic_page(request: Request) -> Response:
    """The lab: picker and form; with ``image``/``analysis`` + ``word``: the attack's result."""
    return await _page(request, None)


@router.get("/typographic.json")
async def typographic_json(request: Request) -> Response:
    """The JSON twin of :func:`typographic_page` (same query parameters)."""
    return await _page(request, "json")


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
        computed = await live.compute(request, live.Upload(data, [], 1))
        stored = await live.store(request, computed)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    if not stored:
        raise HTTPException(
            503, "This server does not store uploads (--no-store), so an uploaded image has no permalink; "
            "pick a dataset image instead.",
        )  # fmt: skip
    query = {k: v for k, v in fields.items() if v}
    return RedirectResponse(urls.typographic(analysis=computed.id, **query), status_code=303)
