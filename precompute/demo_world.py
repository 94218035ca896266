"""The synthetic "shapes and words" world the bundled demo CLIP is trained on.

Every sample is fully determined by ``(seed, index)`` (plus optional overrides). Four modalities:

* ``object``: a filled shape with varied size, position, rotation, shade, blur and background;
* ``drawing``: the outline of a shape (slightly wobbly, like a pen drawing);
* ``text``: a colour word, a shape word or both, written in an ink colour that is independent of
  the word;
* ``labelled_object``: an object with a word written on it (on the shape or on a small label).

Each :class:`Sample` carries its ground truth (``truth``) so later stages can be validated.
Fonts: DejaVu (Debian ``fonts-dejavu-core``) when installed, plus Pillow's built-in scalable font;
nothing is downloaded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from app.neurons.typographic import NAMED_COLOURS

IMAGE_SIZE = 128
"""Side of every rendered image, in pixels."""

TRAIN_SEED = 0
"""Seed of the training stream."""
HELDOUT_SEED = 1_000_003
"""Seed of held-out renderings (evaluation, ``demo:N`` datasets); disjoint from training."""

COLOURS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
)  # fmt: skip
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
CONCEPTS: tuple[str, ...] = COLOURS + SHAPES
MATCHED_LABELS = 0.1
"""Default share of labelled objects whose word names their own colour or shape."""
MODALITIES: tuple[str, ...] = ("object", "drawing", "text", "labelled_object")
DISTRACTOR_RANKS: tuple[int, int] = (10_000, 30_000)
"""Frequency ranks of the BPE words written as distractors: after the 10,000 that the words
stage renders, so the words a neuron page lists are never words the model was trained on."""

RGB = tuple[int, int, int]

PALETTE: dict[str, RGB] = {name: NAMED_COLOURS[name] for name in COLOURS}
"""Base RGB of each colour concept; samples vary its shade around it."""

NEUTRAL_INKS: dict[str, RGB] = {"black": (20, 20, 20), "white": (245, 245, 245), "grey": (120, 120, 120)}
"""Non-concept ink colours used for text."""

DEFAULT_MODALITY_WEIGHTS: dict[str, float] = {
    "object": 0.25,
    "drawing": 0.15,
    "text": 0.35,
    "labelled_object": 0.25,
}
DEFAULT_WORD_SIZE: tuple[int, int] = (22, 54)
"""Range of the font size (px) of written words, before shrinking long words to fit."""

_SS = 2  # supersampling factor for anti-aliased shapes

_DEJAVU_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
_DEJAVU_FILES = (
    "DejaVuSans-Bold.ttf",
    "DejaVuSans.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
)
_BUILTIN = "builtin"


@dataclass(frozen=True)
class Sample:
    """One rendering of the world: an RGB image, its caption and its ground truth.

    ``truth`` keys: ``modality``, ``colour``, ``shape``, ``word`` (``None`` when absent), plus
    ``ink`` (ink colour name of written text), ``font``, ``word_size`` and the caption template.
    """

    image: Image.Image
    caption: str
    truth: dict[str, Any]


@lru_cache(maxsize=1)
def font_names() -> tuple[str, ...]:
    """Fonts available here: the DejaVu faces that are installed plus Pillow's built-in font."""
    names: list[str] = []
    for name in _DEJAVU_FILES:
        if any((d / name).is_file() for d in _DEJAVU_DIRS):
            names.append(name)
    names.append(_BUILTIN)
    return tuple(names)


@lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if name != _BUILTIN:
        for d in _DEJAVU_DIRS:
            if (d / name).is_file():
                return ImageFont.truetype(str(d / name), size)
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1)
def distractor_words() -> tuple[str, ...]:
    """Non-concept words for ``distractors``: BPE whole words of ``DISTRACTOR_RANKS``."""
    from app.neurons.vocabulary import bpe_words

    lo, hi = DISTRACTOR_RANKS
    return tuple(w for w in bpe_words(hi, start=lo) if w not in CONCEPTS)


def _rng(seed: int, index: int, salt: str = "") -> random.Random:
    return random.Random(f"conceptscope-demo/{seed}/{index}/{salt}")


def _clip(v: float) -> int:
    return max(0, min(255, int(round(v))))


def shade(rgb: RGB, amount: float) -> RGB:
    """Lighten (``amount`` > 0, towards white) or darken (< 0, towards black) a colour."""
    if amount >= 0:
        return tuple(_clip(c + (255 - c) * amount) for c in rgb)  # type: ignore[return-value]
    return tuple(_clip(c * (1 + amount)) for c in rgb)  # type: ignore[return-value]


def _luma(rgb: RGB) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


# --------------------------------------------------------------------------------------- shapes


def shape_outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon points of ``shape`` centred at (cx, cy) with radius ``r``, rotated by ``angle``."""
    pts: list[tuple[float, float]]
    if shape == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in (2 * math.pi * i / 48 for i in range(48))]
    elif shape == "square":
        s = 0.8
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle":
        pts = [
            (math.cos(a), math.sin(a) + 0.15) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = 1.0 if k % 2 == 0 else 0.42
            pts.append((rr * math.cos(a), rr * math.sin(a) + 0.08))
    elif shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -y / 17.0 + 0.1))
    elif shape == "cross":
        a, b = 0.3, 0.95
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
               (-b, a), (-b, -a), (-a, -a)]  # fmt: skip
    else:
        raise ValueError(f"unknown shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _densify(pts: list[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for i, (x0, y0) in enumerate(pts):
        x1, y1 = pts[(i + 1) % len(pts)]
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        out.extend((x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n) for k in range(n))
    return out


# ------------------------------------------------------------------------------------- planning


def _background(rng: random.Random, modality: str) -> dict[str, Any]:
    if modality in ("drawing", "text") and rng.random() < 0.6:
        level = rng.uniform(215, 255)  # paper
    else:
        level = rng.uniform(25, 235)
    tint = tuple(rng.uniform(-12, 12) for _ in range(3))
    base = tuple(_clip(level + t) for t in tint)
    kind = rng.choice(("flat", "flat", "gradient", "noise"))
    return {
        "rgb": base,
        "kind": kind,
        "delta": rng.uniform(-50, 50),
        "axis": rng.random() < 0.5,
        "noise_seed": rng.getrandbits(32),
    }


def _pick_ink(rng: random.Random, bg: RGB, neutral: bool = False) -> tuple[str, RGB]:
    """An ink colour (concept colour or neutral) with enough contrast to the background."""
    names = list(NEUTRAL_INKS) if neutral else list(COLOURS) + list(NEUTRAL_INKS)
    for _ in range(50):
        name = rng.choice(names)
        base = PALETTE.get(name) or NEUTRAL_INKS[name]
        rgb = shade(base, rng.uniform(-0.15, 0.15)) if name in PALETTE else base
        if abs(_luma(rgb) - _luma(bg)) < 60:
            continue
        return name, rgb
    return ("black", NEUTRAL_INKS["black"]) if _luma(bg) > 128 else ("white", NEUTRAL_INKS["white"])


def _colour_rgb(rng: random.Random, colour: str) -> RGB:
    return shade(PALETTE[colour], rng.uniform(-0.22, 0.18))


def _object_bg(rng: random.Random, modality: str, fill: RGB) -> dict[str, Any]:
    for _ in range(20):
        bg = _background(rng, modality)
        if (
            abs(_luma(bg["rgb"]) - _luma(fill)) > 35
            or max(abs(a - b) for a, b in zip(bg["rgb"], fill, strict=True)) > 90
        ):
            return bg
    return _background(rng, modality)


def _a(word: str | None) -> str:
    return "an" if word and word[0] in "aeiou" else "a"


def _caption(
    rng: random.Random, modality: str, colour: str | None, shape: str | None, word: str | None
) -> tuple[str, str]:
    """A caption (and its template name) for the given ground truth."""
    if modality == "object":
        tpl = rng.choice(["photo", "photo", "a", "bare", "colour_only", "shape_only", "concept"])
        if tpl == "concept":  # the concept name alone, as for written words
            tpl = rng.choice(["colour_word", "shape_word"])
        text = {
            "colour_word": f"{colour}",
            "shape_word": f"{shape}",
            "photo": f"a photo of {_a(colour)} {colour} {shape}",
            "a": f"{_a(colour)} {colour} {shape}",
            "bare": f"{colour} {shape}",
            "colour_only": f"something {colour}",
            "shape_only": f"a photo of a {shape}",
        }[tpl]
    elif modality == "drawing":
        tpl = rng.choice(["drawing", "drawing", "sketch", "shape_only"])
        text = {
            "drawing": f"a drawing of {_a(colour)} {colour} {shape}",
            "sketch": f"a sketch of {_a(colour)} {colour} {shape}",
            "shape_only": f"a drawing of a {shape}",
            "colour_word": f"{colour}",
            "shape_word": f"{shape}",
        }[tpl]
    elif modality == "text":
        tpl = rng.choice(["word", "word", "bare", "says", "written"])
        plural = word is not None and " " in word
        text = {
            "word": f"the word{'s' if plural else ''} {word}",
            "bare": f"{word}",
            "says": f"a sign that says {word}",
            "written": f"{word} written in text",
        }[tpl]
    elif modality == "labelled_object":
        tpl = rng.choice(["labelled", "labelled", "with_word", "word_only", "object_only"])
        text = {
            "labelled": f"{_a(colour)} {colour} {shape} labelled {word}",
            "with_word": f"{_a(colour)} {colour} {shape} with the word {word}",
            "word_only": f"the word {word}",
            "object_only": f"a photo of {_a(colour)} {colour} {shape}",
        }[tpl]
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return text, tpl


def plan(seed: int, index: int, modality: str | None = None, **overrides: Any) -> dict[str, Any]:
    """All random choices of sample ``(seed, index)``, without drawing it.

    ``overrides`` may fix ``colour``, ``shape``, ``word`` (any string; for text a word or
    "colour shape" pair), ``ink`` (a colour name), ``font``, ``word_size`` (a ``(lo, hi)`` font
    size range), ``caption`` (a template name) and ``modality_weights``; ``easy=True`` writes
    single lower-case words in the first font with black/white/grey ink (curriculum start);
    ``matched_labels=p`` writes the object's own colour or shape on a labelled object with
    probability ``p`` (default ``MATCHED_LABELS``; otherwise another concept of that kind);
    ``bare_captions=p`` captions objects, drawings and text by the concept name alone ("red",
    "star") with probability ``p``, as real captions sometimes do for a thing and a written word;
    ``distractors=p`` writes, with probability ``p``, a text image's word as a non-concept word
    (:func:`distractor_words`, captioned like any word: "the word kettle") so that reading units
    learn to tell "red" from look-alikes such as "reed".
    """
    rng = _rng(seed, index)
    weights: dict[str, float] = overrides.get("modality_weights") or DEFAULT_MODALITY_WEIGHTS
    if modality is None:
        mods = list(weights)
        modality = rng.choices(mods, weights=[weights[m] for m in mods])[0]
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}")
    colour: str | None = overrides.get("colour") or rng.choice(COLOURS)
    shape: str | None = overrides.get("shape") or rng.choice(SHAPES)
    word: str | None = None
    fonts = font_names()
    p: dict[str, Any] = {"modality": modality}
    easy = bool(overrides.get("easy"))
    if easy:
        p["easy"] = True
    if modality == "text":
        distractor_rng = _rng(seed, index, "distractor")
        if "word" in overrides:
            word = overrides["word"]
        elif distractor_rng.random() < float(overrides.get("distractors") or 0.0):
            word = distractor_rng.choice(distractor_words())
        else:
            u = rng.random()
            pair = 0.0 if easy else 0.1
            word = colour if u < (1 - pair) / 2 else shape if u < 1 - pair else f"{colour} {shape}"
        assert word is not None
        parts = word.split()
        colour = next((w for w in parts if w in COLOURS), None)
        shape = next((w for w in parts if w in SHAPES), None)
    elif modality == "labelled_object":
        if "word" in overrides:
            word = overrides["word"]
        else:
            kind = COLOURS if rng.random() < 0.5 else SHAPES
            own = colour if kind is COLOURS else shape
            matched = float(overrides.get("matched_labels", MATCHED_LABELS))
            word = own if rng.random() < matched else rng.choice([c for c in kind if c != own])
    if modality in ("text", "labelled_object"):
        assert word is not None
        lo, hi = overrides.get("word_size") or DEFAULT_WORD_SIZE
        if modality == "labelled_object":
            lo, hi = max(12, int(lo * 0.7)), max(14, int(hi * 0.7))
        u = rng.random()
        case = "lower" if u < 0.8 or easy else "upper" if u < 0.9 else "title"
        p.update(
            font=overrides.get("font") or (fonts[0] if easy else rng.choice(fonts)),
            word_size=rng.randint(lo, hi),
            case=case,
        )
    cap_rng = _rng(seed, index, "caption")
    bare = float(overrides.get("bare_captions") or 0.0)
    bare_rng = _rng(seed, index, "bare")
    if "caption" not in overrides and bare and modality != "labelled_object" and bare_rng.random() < bare:
        if modality == "text":
            tpl = "bare"
        else:
            tpl = "colour_word" if bare_rng.random() < 0.5 else "shape_word"
        overrides = {**overrides, "caption": tpl}
    if "caption" in overrides:
        try:
            caption, tpl = _caption(_FixedChoice(overrides["caption"]), modality, colour, shape, word)
        except KeyError:
            raise ValueError(f"no caption template {overrides['caption']!r} for {modality}") from None
    else:
        caption, tpl = _caption(cap_rng, modality, colour, shape, word)
    p.update(colour=colour, shape=shape, word=word, caption=caption, template=tpl)
    p["ink"] = overrides.get("ink")
    return p


class _FixedChoice(random.Random):
    """A Random whose ``choice`` returns a fixed template name (for caption overrides)."""

    def __init__(self, value: str) -> None:
        super().__init__(0)
        self._value = value

    def choice(self, seq: Any) -> Any:  # noqa: D102
        return self._value


# -------------------------------------------------------------------------------------- drawing


def _paint_background(bg: dict[str, Any], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), bg["rgb"])
    if bg["kind"] == "gradient":
        grad = Image.linear_gradient("L").resize((size, size))
        if bg["axis"]:
            grad = grad.rotate(90)
        other = Image.new("RGB", (size, size), tuple(_clip(c + bg["delta"]) for c in bg["rgb"]))
        img = Image.composite(other, img, grad)
    elif bg["kind"] == "noise":
        gen = np.random.default_rng(bg["noise_seed"])
        noise = np.clip(gen.normal(128, 12, (size, size)), 0, 255).astype(np.uint8)
        img = ImageChops.add(img, Image.fromarray(noise, "L").convert("RGB"), 1.0, -128)
    return img


def _case(word: str, case: str) -> str:
    return word.upper() if case == "upper" else word.title() if case == "title" else word


def _text_layer(word: str, font_name: str, size: int, max_w: int, max_h: int) -> tuple[Image.Image, int]:
    """A tight "L" mask of ``word`` (lines split on spaces), shrunk to fit ``max_w`` × ``max_h``."""
    lines = word.split(" ")
    while True:
        font = _font(font_name, size)
        boxes = [font.getbbox(line) for line in lines]
        widths = [b[2] - b[0] for b in boxes]
        asc, desc = font.getmetrics()
        line_h = asc + desc
        w, h = max(widths), line_h * len(lines)
        if (w <= max_w and h <= max_h) or size <= 8:
            break
        size = max(8, int(size * min(max_w / max(w, 1), max_h / max(h, 1), 0.95)))
    mask = Image.new("L", (w + 4, h + 4), 0)
    d = ImageDraw.Draw(mask)
    for i, (line, box, lw) in enumerate(zip(lines, boxes, widths, strict=True)):
        d.text((2 + (w - lw) // 2 - box[0], 2 + i * line_h), line, fill=255, font=font)
    bbox = mask.getbbox() or (0, 0, 1, 1)
    return mask.crop(bbox), size


def draw(p: dict[str, Any], seed: int, index: int) -> Image.Image:
    """Draw the image of plan ``p`` (the geometry randomness comes from ``(seed, index)``)."""
    rng = _rng(seed, index, "draw")
    n = IMAGE_SIZE
    modality = p["modality"]
    if modality in ("object", "drawing", "labelled_object"):
        fill = _colour_rgb(rng, p["colour"])
        bg = _object_bg(rng, modality, fill)
        img = _paint_background(bg, n)
        big = n * _SS
        if modality == "labelled_object":
            r = rng.uniform(0.34, 0.46) * n
        else:
            r = rng.uniform(0.18, 0.44) * n
        cx = rng.uniform(r, n - r)
        cy = rng.uniform(r, n - r)
        if p["shape"] == "heart":
            angle = rng.uniform(-0.4, 0.4)
        elif modality == "labelled_object":
            angle = rng.uniform(-0.25, 0.25)
        else:
            angle = rng.uniform(0, 2 * math.pi)
        pts = shape_outline(p["shape"], cx * _SS, cy * _SS, r * _SS, angle)
        mask = Image.new("L", (big, big), 0)
        md = ImageDraw.Draw(mask)
        if modality == "drawing":
            wob = _densify(pts, 6 * _SS * n / 96)
            jit = rng.uniform(0.3, 1.6) * _SS * n / 96
            wob = [(x + rng.gauss(0, jit), y + rng.gauss(0, jit)) for x, y in wob]
            lw = int(rng.uniform(1.5, 4.0) * _SS * n / 96)
            md.line(wob + wob[:1], fill=255, width=lw, joint="curve")
        else:
            md.polygon(pts, fill=255)
        mask = mask.resize((n, n), Image.Resampling.LANCZOS)
        img.paste(Image.new("RGB", (n, n), fill), (0, 0), mask)
        if modality == "labelled_object":
            word = _case(p["word"], p["case"])
            on_label = rng.random() < 0.5
            tmask, used = _text_layer(word, p["font"], p["word_size"], int(r * 1.5), int(r * 0.9))
            tw, th = tmask.size
            tx = int(cx - tw / 2 + rng.uniform(-2, 2))
            ty = int(cy - th / 2 + rng.uniform(-2, 2))
            tx, ty = max(0, min(n - tw, tx)), max(0, min(n - th, ty))
            if on_label:
                pad = 3
                label_rgb = (245, 245, 240) if rng.random() < 0.7 else (30, 30, 30)
                ImageDraw.Draw(img).rectangle(
                    (tx - pad, ty - pad, tx + tw + pad, ty + th + pad), fill=label_rgb
                )
                ink_name, ink = ("black", NEUTRAL_INKS["black"]) if _luma(label_rgb) > 128 else (
                    "white", NEUTRAL_INKS["white"])  # fmt: skip
            else:
                ink_name, ink = (
                    ("white", NEUTRAL_INKS["white"]) if _luma(fill) < 150 else
                    ("black", NEUTRAL_INKS["black"])
                )  # fmt: skip
            img.paste(Image.new("RGB", (tw, th), ink), (tx, ty), tmask)
            p["ink"], p["word_px"], p["text_box"] = ink_name, used, (tx, ty, tx + tw, ty + th)
            p["ink_rgb"], p["on_label"], p["text_rotation"] = ink, on_label, 0.0
        p["fill_rgb"], p["rotation"] = fill, angle
        p["shape_box"] = (cx - r, cy - r, cx + r, cy + r)
    elif modality == "text":
        bg = _background(rng, modality)
        img = _paint_background(bg, n)
        if p.get("ink"):
            ink_name = p["ink"]
            base = PALETTE.get(ink_name) or NEUTRAL_INKS[ink_name]
            ink = base
        else:
            ink_name, ink = _pick_ink(rng, bg["rgb"], neutral=bool(p.get("easy")))
        word = _case(p["word"], p["case"])
        tmask, used = _text_layer(word, p["font"], p["word_size"], int(n * 0.94), int(n * 0.9))
        tw, th = tmask.size
        tx = rng.randint(0, max(0, n - tw))
        ty = rng.randint(0, max(0, n - th))
        rot = 0.0
        if rng.random() < 0.3:
            rot = rng.uniform(-12, 12)
            big = tmask.rotate(rot, expand=True, resample=Image.Resampling.BICUBIC)
            if big.width <= n and big.height <= n:
                tmask, (tw, th) = big, big.size
                tx = rng.randint(0, n - tw)
                ty = rng.randint(0, n - th)
            else:
                rot = 0.0
        img.paste(Image.new("RGB", (tw, th), ink), (tx, ty), tmask)
        p["ink"], p["word_px"], p["text_box"] = ink_name, used, (tx, ty, tx + tw, ty + th)
        p["ink_rgb"], p["text_rotation"], p["bg_rgb"] = ink, rot, bg["rgb"]
    else:
        raise ValueError(f"unknown modality {modality!r}")
    p["blur"] = 0.0
    if rng.random() < 0.3:
        p["blur"] = rng.uniform(0.3, 1.0 if modality != "object" else 1.5)
        img = img.filter(ImageFilter.GaussianBlur(p["blur"]))
    return img


def render(seed: int, index: int, modality: str | None = None, **overrides: Any) -> Sample:
    """Render sample ``(seed, index)``; see :func:`plan` for the accepted overrides."""
    p = plan(seed, index, modality, **overrides)
    img = draw(p, seed, index)
    truth = {k: v for k, v in p.items() if k != "caption"}
    return Sample(image=img, caption=p["caption"], truth=truth)


def render_word(
    word: str,
    seed: int = HELDOUT_SEED,
    index: int = 0,
    *,
    font: str | None = None,
    size: int | None = None,
    ink: str | None = "black",
    background: RGB | None = (255, 255, 255),
) -> Image.Image:
    """``word`` written as an image of text (centred, black on white by default).

    With ``background=None``/``ink=None`` the background and ink vary with ``(seed, index)``
    like the ``text`` modality.
    """
    rng = _rng(seed, index, "word")
    n = IMAGE_SIZE
    font = font or font_names()[0]
    size = size or rng.randint(*DEFAULT_WORD_SIZE)
    bg_rgb: RGB = background if background is not None else _background(rng, "text")["rgb"]
    img = Image.new("RGB", (n, n), bg_rgb)
    if ink is None:
        _, ink_rgb = _pick_ink(rng, bg_rgb)
    else:
        ink_rgb = PALETTE.get(ink) or NEUTRAL_INKS.get(ink) or (0, 0, 0)
    tmask, _ = _text_layer(word, font, size, int(n * 0.94), int(n * 0.9))
    tw, th = tmask.size
    img.paste(Image.new("RGB", (tw, th), ink_rgb), ((n - tw) // 2, (n - th) // 2), tmask)
    return img
