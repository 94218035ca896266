"""The computation behind ``/typographic`` (the view only parses the request and presents).

:func:`run_attack` draws the word on the model's centre-square view of the image (and, as a
control, the same label sticker without the word), runs the live model on each, and returns the
zero-shot probabilities before and after and the neurons whose activations changed most (in
σ, each unit's std over the indexed dataset). :func:`pick_examples` chooses the picker's
dataset images; :func:`verdict` says whether the attack worked.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool

from app.db import typographic as typo_db
from app.db.analyses import ExampleImage, example_images
from app.db.typographic import Source
from app.db.units import UnitSummary
from app.live.context import live_http_error
from app.live.runner import LiveError, LiveRunner
from app.neurons import zeroshot
from app.neurons.typographic import Attack, activation_changes, write_word

N_EXAMPLES = 12
N_CHANGES = 8
DEFAULT_CLASSES = ["apple", "iPod", "library", "pizza", "toaster", "dog", "piggy bank", "text"]
MAX_VOCAB_AS_CLASSES = 30
BLANK_INK = "#fafaf5"  # the label sticker's colour (app.neurons.typographic.write_word)


def png_uri(image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ inputs


def source_image(
    sessions: Callable[[], Any], image: str | None = None, analysis: str | None = None
) -> tuple[PILImage.Image, dict[str, Any]] | None:
    """The picked dataset image (``image`` id) or stored upload (``analysis`` id) and its
    description; ``None`` when neither is given. Raises :class:`LookupError` with a message
    fit for a 404 when the id is malformed or unknown."""
    if image is None and analysis is None:
        return None
    with sessions() as session:
        if image is not None:
            if not image.isdigit():
                raise LookupError(f"{image!r} is not a dataset image id.")
            found: Source | None = typo_db.dataset_image(session, int(image))
            if found is None:
                raise LookupError(f"There is no dataset image {image}.")
        else:
            found = typo_db.stored_upload(session, str(analysis))
            if found is None:
                raise LookupError(
                    f"No stored upload {analysis!r} (old uploads are evicted); upload it again."
                )
    picture = PILImage.open(io.BytesIO(found.data))
    picture.load()
    return picture.convert("RGB"), found.about


def classes(sessions: Callable[[], Any], model_slug: str | None, names: list[str]) -> list[str]:
    """The user's class names, else the model's label vocabulary (2–30 words), else a default."""
    if names:
        return names
    if model_slug:
        with sessions() as session:
            vocab = typo_db.vocabulary(session, model_slug)
        if 2 <= len(vocab) <= MAX_VOCAB_AS_CLASSES:
            return vocab
    return list(DEFAULT_CLASSES)


def pick_examples(
    sessions: Callable[[], Any], pick: str | None = None
) -> tuple[list[ExampleImage], dict[str, str] | None]:
    """Dataset images to pick from (plain objects first when the dataset says so, one of each
    colour first), or those whose caption contains ``pick``; and a suggested attack (fields of
    the form) when the images carry colour ground truth (the demo world)."""
    with sessions() as session:
        rows = example_images(session, 600, spread=False)  # the first 600 dataset images
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
    return pool[:N_EXAMPLES], suggestion


# ------------------------------------------------------------------------------ the attack


def verdict(word: str, classes: list[str], top0: int, top1: int) -> dict[str, Any]:
    """Did writing ``word`` make the model predict it? ``attack_succeeded`` is ``None`` when the
    word is not among the classes (the attack cannot succeed) or already was the prediction."""
    lowered = [c.strip().lower() for c in classes]
    target = lowered.index(word.strip().lower()) if word.strip().lower() in lowered else None
    before, after = classes[top0], classes[top1]
    if target is None:
        moved = f"moved from “{before}” to “{after}”" if top0 != top1 else f"stays “{after}”"
        text = f"“{word}” is not among the classes, so it cannot win; the prediction {moved}."
        return {"attack_succeeded": None, "verdict": text}
    if top0 == target:
        return {"attack_succeeded": None, "verdict": f"The image was already classified as “{before}”."}
    if top1 == target:
        text = f"The attack worked: the prediction moved from “{before}” to the written word “{after}”."
        return {"attack_succeeded": True, "verdict": text}
    if top0 != top1:
        return {"attack_succeeded": False, "verdict": (
            f"The attack failed: the prediction moved from “{before}” to “{after}”, not to the written "
            f"word “{classes[target]}”.")}  # fmt: skip
    return {"attack_succeeded": False, "verdict": f"The attack failed: the prediction stays “{after}”."}


@dataclass
class LayerChanges:
    """One layer's units that rose and fell most, each with its summary (label, thumbnail)."""

    layer: str
    rose: list[tuple[Any, UnitSummary | None]]
    fell: list[tuple[Any, UnitSummary | None]]


@dataclass
class AttackResult:
    """What one attack computed (images as PNG data URIs; the view adds URLs)."""

    before: str
    after: str
    side: int
    prompts: list[str]
    logit_scale: float
    p_before: np.ndarray
    p_after: np.ndarray
    control: dict[str, Any] | None  # blank label: top class and probabilities, image
    changes: list[LayerChanges]


def _changes(sessions: Callable[[], Any], slug: str, changes: dict[str, Any]) -> list[LayerChanges]:
    wanted = {name: [c.unit for c in ch["rose"] + ch["fell"]] for name, ch in changes.items()}
    with sessions() as session:
        positions, summaries = typo_db.layer_unit_summaries(session, slug, wanted)
    out = []
    for name in sorted(changes, key=lambda n: -positions[n] if n in positions else 0):
        found = summaries.get(name, {})
        out.append(
            LayerChanges(
                name,
                [(c, found.get(c.unit)) for c in changes[name]["rose"]],
                [(c, found.get(c.unit)) for c in changes[name]["fell"]],
            )
        )
    return out


def _stds(sessions: Callable[[], Any], slug: str) -> dict[str, np.ndarray]:
    with sessions() as session:
        return typo_db.unit_stds(session, slug)


async def run_attack(
    sessions: Callable[[], Any],
    runner: LiveRunner,
    image: PILImage.Image,
    attack: Attack,
    classes: Sequence[str],
    control: str | None = None,
    *,
    centre_square: Callable[[PILImage.Image, int], PILImage.Image],
) -> AttackResult:
    """Before/after zero-shot probabilities and neuron changes (raises HTTP 503 on runner errors).
    ``centre_square`` crops the image to the model's view (the upload module's)."""
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
        class_emb = await runner.submit(zeroshot.encode_concepts, list(classes))
    except LiveError as exc:
        raise live_http_error(exc) from exc
    scale = runner.logit_scale
    p0 = zeroshot.zero_shot(before.embedding, class_emb, scale)
    p1 = zeroshot.zero_shot(after.embedding, class_emb, scale)
    stds = await run_in_threadpool(_stds, sessions, runner.slug)
    changes = activation_changes(before.values, after.values, stds, N_CHANGES)
    control_result = None
    if blank_acts is not None:
        pb = zeroshot.zero_shot(blank_acts.embedding, class_emb, scale)
        control_result = {
            "kind": "blank label: the same sticker without the word",
            "image": png_uri(blank_img),
            "top": classes[int(np.argmax(pb))],
            "probabilities": {classes[i]: float(pb[i]) for i in range(len(classes))},
        }
    return AttackResult(
        before=png_uri(before_img),
        after=png_uri(after_img),
        side=size,
        prompts=list(zeroshot.templates_for(runner.loaded)),
        logit_scale=scale,
        p_before=p0,
        p_after=p1,
        control=control_result,
        changes=await run_in_threadpool(_changes, sessions, runner.slug, changes),
    )
