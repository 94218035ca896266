"""Link-preview images (OpenGraph / Twitter cards): 1200×630 PNGs drawn with Pillow.

A neuron's preview shows its feature visualization, its top dataset examples with their values,
and its label with the label's source; an analysis' preview shows the analysed image and its
strongest neurons. Rendering reads only; results are kept in a small LRU (a
:class:`PreviewCache`, one per app: the caller keeps it, e.g. with ``app_cache``) keyed by the
content they show (blob hashes, label, values), so a changed index renders a new image. A
neuron's title label is its unit summary's (:func:`app.db.units.unit_summaries`: only an
evidence-backed label is a title).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image, ImageDraw
from sqlalchemy.orm import Session

from app.db import queries
from app.db.cards import UnitCard, UnitRef, unit_card
from app.db.schema import Analysis, Blob
from app.db.units import UnitSummary, unit_summaries
from app.lru import LRU
from app.neurons.render import load_font

WIDTH, HEIGHT = 1200, 630
BG, INK, MUTED, ACCENT = (251, 251, 250), (29, 31, 35), (107, 112, 121), (59, 91, 219)
CACHE_ITEMS = 64


class PreviewCache(LRU):
    """Rendered previews by content key: a bounded LRU (:data:`CACHE_ITEMS`), thread-safe."""

    def __init__(self, items: int = CACHE_ITEMS) -> None:
        super().__init__(items)


def _cached(cache: PreviewCache | None, key: str, render: Any) -> tuple[str, bytes]:
    """``(etag, bytes)`` of ``render()`` for ``key``, from ``cache`` when it holds them."""
    etag = hashlib.sha256(key.encode()).hexdigest()[:32]
    found = cache.get(etag) if cache is not None else None
    if found is not None:
        return etag, found
    data = render()
    if cache is not None:
        cache.put(etag, data)
    return etag, data


def _blob_image(session: Session, sha: str) -> Image.Image | None:
    blob = session.get(Blob, sha)
    if blob is None:
        return None
    try:
        return Image.open(io.BytesIO(blob.data)).convert("RGB")
    except Exception:  # an undecodable blob: leave its slot empty
        return None


def _square(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.crop(box).resize((side, side), Image.Resampling.LANCZOS)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


def title_of(session: Session, card: UnitCard) -> UnitSummary | None:
    """The card's unit summary when it has a title label (``None``: no label is a title)."""
    summary = unit_summaries(session, card.layer, [card.neuron.unit]).get(card.neuron.unit)
    return summary if summary is not None and summary.label is not None else None


def neuron_preview(
    session: Session, ref: UnitRef, cache: PreviewCache | None = None
) -> tuple[str, bytes] | None:
    """``(etag, png)`` of a neuron's link preview, or ``None`` when the index lacks the unit."""
    card = unit_card(session, ref, n_examples=10, n_words=5)
    if card is None:
        return None
    label = title_of(session, card)
    key = "|".join(
        [
            "neuron-v2",
            str(ref),
            card.featurevis.sha256 if card.featurevis else "-",
            *(f"{e.thumb.sha256}:{e.value:.4g}" for e in card.examples),
            f"{label.label}:{label.label_source}:{label.label_score}" if label else "-",
            f"{card.neuron.max:.4g}",
        ]
    )

    def render() -> bytes:
        img = Image.new("RGB", (WIDTH, HEIGHT), BG)
        draw = ImageDraw.Draw(img)
        big, mid, small = load_font(size=54), load_font("DejaVuSans.ttf", 30), load_font("DejaVuSans.ttf", 22)
        x0 = 40
        if card.featurevis is not None:
            vis = _blob_image(session, card.featurevis.sha256)
            if vis is not None:
                img.paste(_square(vis, 400), (40, 40))
                draw.text((40, 448), "feature visualization", font=small, fill=MUTED)
                x0 = 480
        cols = 3 if x0 > 40 else 5
        gap = 12
        side = min(210, (WIDTH - 40 - x0 - (cols - 1) * gap) // cols)
        for i, e in enumerate(card.examples[: cols * 2]):
            thumb = _blob_image(session, e.thumb.sha256)
            col, row = i % cols, i // cols
            x, y = x0 + col * (side + gap), 40 + row * (side + gap)
            if thumb is not None:
                img.paste(_square(thumb, side), (x, y))
            draw.rectangle((x, y + side - 30, x + 90, y + side), fill=(0, 0, 0))
            draw.text((x + 6, y + side - 28), f"{e.value:.3g}", font=small, fill=(255, 255, 255))
        title = f"{card.layer.name} / unit {card.neuron.unit} · {card.model.slug}"
        draw.text((40, 490), _fit(draw, title, mid, WIDTH - 80), font=mid, fill=INK)
        if label is not None:
            text = f"“{label.label}”"
            draw.text((40, 530), _fit(draw, text, big, 760), font=big, fill=ACCENT)
            source = str(label.label_source)
            source += f", score {label.label_score:.2f}" if label.label_score is not None else ""
            draw.text((820, 556), _fit(draw, f"label: {source}", small, 340), font=small, fill=MUTED)
        else:
            draw.text((40, 540), "no label", font=mid, fill=MUTED)
        draw.text((WIDTH - 200, 596), "Conceptscope", font=small, fill=MUTED)
        return _png(img)

    return _cached(cache, key, render)


def analysis_preview(
    session: Session, analysis: Analysis, model_slug: str, cache: PreviewCache | None = None
) -> tuple[str, bytes]:
    """``(etag, png)``: the analysed image and the strongest neurons of its deepest layer."""
    key = "|".join(["analysis-v2", analysis.id, str(analysis.image_sha256)])

    def render() -> bytes:
        layer, neurons = analysis_neurons(session, analysis, model_slug, 4)
        img = Image.new("RGB", (WIDTH, HEIGHT), BG)
        draw = ImageDraw.Draw(img)
        mid, small = load_font("DejaVuSans.ttf", 30), load_font("DejaVuSans.ttf", 24)
        if analysis.image_sha256:
            photo = _blob_image(session, analysis.image_sha256)
            if photo is not None:
                img.paste(_square(photo, 550), (40, 40))
        draw.text((630, 40), "Neurons that fire on this image", font=mid, fill=INK)
        draw.text((630, 84), f"{model_slug} · {layer}", font=small, fill=MUTED)
        for i, n in enumerate(neurons):
            y = 140 + i * 118
            if n["thumb"] is not None:
                thumb = _blob_image(session, n["thumb"].sha256)
                if thumb is not None:
                    img.paste(_square(thumb, 100), (630, y))
            text = f"unit {n['unit']}" + (f" · {n['label']}" if n["label"] else "")
            draw.text((748, y + 10), _fit(draw, text, mid, WIDTH - 770), font=mid, fill=ACCENT)
            draw.text((748, y + 54), f"value {n['value']:.3g}", font=small, fill=MUTED)
        draw.text((WIDTH - 230, 596), "Conceptscope", font=small, fill=MUTED)
        return _png(img)

    return _cached(cache, key, render)


def get_analysis(session: Session, analysis_id: str) -> tuple[Analysis, str] | None:
    """A stored analysis and its model's slug (``None`` when it is not, or no longer, stored)."""
    try:
        row = session.get(Analysis, analysis_id)
    except Exception:  # no analyses table in a read-only index
        return None
    if row is None:
        return None
    model = session.get(queries.Model, row.model_id)
    return row, model.slug if model else "?"


def analysis_neurons(
    session: Session, analysis: Analysis, slug: str, n: int = 6
) -> tuple[str, list[dict[str, Any]]]:
    """(deepest layer, its ``n`` strongest neurons with their unit summary's title label and top
    thumbnail) of an analysis (:func:`app.db.units.unit_summaries`: three queries)."""
    layers = analysis.result.get("layers", []) if isinstance(analysis.result, dict) else []
    model = queries.get_model(session, slug)
    rows = {lr.name: lr for lr in queries.list_layers(session, model)} if model else {}
    layers = sorted(layers, key=lambda lr: rows[lr["name"]].position if lr.get("name") in rows else -1)
    if not layers:
        return "?", []
    deepest = layers[-1]
    layer_row = rows.get(deepest["name"])
    items = deepest.get("neurons", [])[:n]
    summaries = unit_summaries(session, layer_row, [int(i["unit"]) for i in items]) if layer_row else {}
    found = []
    for item in items:
        summary = summaries.get(int(item["unit"]))
        found.append(
            {
                "unit": int(item["unit"]),
                "value": float(item.get("value", 0.0)),
                "percentile": item.get("percentile"),
                "label": summary.label if summary else None,
                "thumb": summary.thumb if summary else None,
            }
        )
    return deepest["name"], found


def atlas_sprite(
    session: Session,
    cells: list[tuple[int, int, str | None]],
    cols: int,
    rows: int,
    side: int,
    cache: PreviewCache | None = None,
) -> tuple[str, bytes]:
    """``(etag, jpeg)``: one image holding every atlas thumbnail in its grid cell, so the atlas
    costs one request. ``cells`` are ``(col, row, thumbnail blob hash or None)``."""
    key = "atlas-v1|" + hashlib.sha256(repr((cols, rows, side, cells)).encode()).hexdigest()

    def render() -> bytes:
        img = Image.new("RGB", (cols * side, rows * side), (255, 255, 255))
        decoded: dict[str, Image.Image | None] = {}
        for col, row, sha in cells:
            if sha is None:
                continue
            if sha not in decoded:
                found = _blob_image(session, sha)
                decoded[sha] = _square(found, side) if found is not None else None
            tile = decoded[sha]
            if tile is not None:
                img.paste(tile, (col * side, row * side))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85, optimize=True)
        return out.getvalue()

    return _cached(cache, key, render)
