"""Typographic attacks: write a word on an image and see what the model now believes.

The Distill article showed CLIP reading: an apple labelled "iPod" is classified as an iPod.
:func:`write_word` draws a word on the model's view of an image (placement, size, colour), and
:func:`activation_changes` finds the neurons whose values moved most between the two images,
in units of each neuron's standard deviation over the dataset (so layers and neurons compare).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from app.neurons.render import text_mask

PLACEMENTS = ("centre", "top", "bottom", "label")
"""``label``: the word on a white sticker in the middle, like the article's "iPod" note."""
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 5, 60, 25  # font size in % of the image side
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "grey": (120, 120, 120),
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (35, 160, 55),
    "blue": (35, 75, 220),
    "purple": (125, 45, 175),
    "pink": (245, 125, 185),
    "brown": (120, 72, 30),
}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
MAX_WORD = 40


class AttackError(ValueError):
    """A bad attack parameter; the message says which and what is allowed."""


@dataclass(frozen=True)
class Attack:
    word: str
    placement: str = "centre"
    size: int = DEFAULT_SIZE  # % of the image side
    colour: str = "black"

    @classmethod
    def parse(
        cls, word: str | None, placement: str | None, size: str | int | None, colour: str | None
    ) -> Attack:
        """Validated attack parameters (raises :class:`AttackError`)."""
        text = " ".join((word or "").split())
        if not text:
            raise AttackError("Type a word to write on the image.")
        if len(text) > MAX_WORD:
            raise AttackError(f"The word may have at most {MAX_WORD} characters.")
        where = (placement or "centre").strip().lower().replace("center", "centre")
        if where not in PLACEMENTS:
            raise AttackError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}.")
        try:
            pct = DEFAULT_SIZE if size in (None, "") else int(str(size).strip().rstrip("%"))
        except ValueError as exc:
            raise AttackError(f"size must be a whole number of percent, not {size!r}.") from exc
        if not MIN_SIZE <= pct <= MAX_SIZE:
            raise AttackError(f"size must be between {MIN_SIZE} and {MAX_SIZE} (% of the image side).")
        ink = (colour or "black").strip().lower()
        parse_colour(ink)
        return cls(text, where, pct, ink)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return parse_colour(self.colour)


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour name of :data:`NAMED_COLOURS` or ``#rrggbb``."""
    text = text.strip().lower()
    if text in NAMED_COLOURS:
        return NAMED_COLOURS[text]
    match = _HEX.match(text)
    if match:
        h = match.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    raise AttackError(f"colour must be one of {', '.join(NAMED_COLOURS)} or #rrggbb, not {text!r}.")


def write_word(image: Image.Image, attack: Attack) -> Image.Image:
    """A copy of ``image`` with ``attack.word`` written on it."""
    out = image.convert("RGB").copy()
    side_w, side_h = out.size
    font_px = max(8, int(min(side_w, side_h) * attack.size / 100))
    max_w, max_h = int(side_w * 0.9), int(side_h * (0.45 if attack.placement != "centre" else 0.8))
    mask, _ = text_mask(attack.word, max_w, max_h, size=font_px)
    w, h = mask.size
    x = (side_w - w) // 2
    margin = max(2, side_h // 20)
    if attack.placement == "top":
        y = margin
    elif attack.placement == "bottom":
        y = side_h - h - margin
    else:
        y = (side_h - h) // 2
    if attack.placement == "label":
        pad = max(2, font_px // 5)
        ImageDraw.Draw(out).rectangle((x - pad, y - pad, x + w + pad, y + h + pad), fill=(250, 250, 245))
    out.paste(Image.new("RGB", (w, h), attack.rgb), (x, y), mask)
    return out


@dataclass(frozen=True)
class Change:
    layer: str
    unit: int
    before: float
    after: float
    delta: float
    delta_sigma: float  # delta / the neuron's standard deviation over the dataset


def activation_changes(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    stds: Mapping[str, np.ndarray],
    k: int = 8,
) -> dict[str, dict[str, list[Change]]]:
    """Per layer, the ``k`` neurons that rose most and the ``k`` that fell most (in σ units)."""
    out: dict[str, dict[str, list[Change]]] = {}
    for layer, b in before.items():
        if layer not in after:
            continue
        a = np.asarray(after[layer], np.float64)
        b = np.asarray(b, np.float64)
        std = np.asarray(stds.get(layer, np.ones_like(b)), np.float64)
        std = np.where(np.isfinite(std) & (std > 1e-8), std, max(float(np.nanmedian(std)), 1e-8))
        z = (a - b) / std

        def pick(units: np.ndarray, layer: str = layer, a: np.ndarray = a, b: np.ndarray = b,
                 z: np.ndarray = z) -> list[Change]:  # fmt: skip
            return [
                Change(layer, int(u), float(b[u]), float(a[u]), float(a[u] - b[u]), float(z[u]))
                for u in units
            ]

        rose = [u for u in np.argsort(-z, kind="stable")[:k] if z[u] > 0]
        fell = [u for u in np.argsort(z, kind="stable")[:k] if z[u] < 0]
        out[layer] = {"rose": pick(np.array(rose, int)), "fell": pick(np.array(fell, int))}
    return out
