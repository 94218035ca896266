"""Text → image: a word or phrase written as a picture, for "reading neurons".

The live search renders the query with :func:`render_text` and asks which neurons fire on it.
Fonts are local only: DejaVu (Debian ``fonts-dejavu-core``) when installed, otherwise Pillow's
built-in scalable font (``ImageFont.load_default(size=...)``). Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
DEFAULT_FONT = "DejaVuSans-Bold.ttf"
BUILTIN_FONT = "builtin"
MIN_FONT_PX = 8


@lru_cache(maxsize=256)
def load_font(name: str = DEFAULT_FONT, size: int = 32) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font file ``name`` from the DejaVu folders at ``size`` px, else Pillow's built-in font."""
    if name != BUILTIN_FONT:
        for folder in FONT_DIRS:
            if (folder / name).is_file():
                return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size=size)


def text_mask(
    text: str, max_w: int, max_h: int, *, font: str = DEFAULT_FONT, size: int = 40
) -> tuple[Image.Image, int]:
    """A tight ``L`` mask of ``text`` (one line per space-separated word when it helps), shrunk
    until it fits ``max_w`` × ``max_h``. Returns the mask and the font size used."""
    lines = _layout(text, font, size, max_w)
    while True:
        face = load_font(font, size)
        boxes = [face.getbbox(line) for line in lines]
        widths = [max(1, b[2] - b[0]) for b in boxes]
        ascent, descent = face.getmetrics()
        line_h = ascent + descent
        w, h = max(widths), line_h * len(lines)
        if (w <= max_w and h <= max_h) or size <= MIN_FONT_PX:
            break
        size = max(MIN_FONT_PX, int(size * min(max_w / w, max_h / h, 0.95)))
    mask = Image.new("L", (w + 4, h + 4), 0)
    pen = ImageDraw.Draw(mask)
    for i, (line, box, lw) in enumerate(zip(lines, boxes, widths, strict=True)):
        pen.text((2 + (w - lw) // 2 - box[0], 2 + i * line_h), line, fill=255, font=face)
    return mask.crop(mask.getbbox() or (0, 0, 1, 1)), size


def _layout(text: str, font: str, size: int, max_w: int) -> list[str]:
    """Split ``text`` into lines: words on their own lines when the single line is too wide."""
    words = text.split()
    if len(words) <= 1:
        return [text.strip() or " "]
    face = load_font(font, size)
    one_line = " ".join(words)
    if face.getlength(one_line) <= max_w:
        return [one_line]
    # greedy wrap to roughly square text blocks
    target = max(max_w, face.getlength(one_line) / max(1.0, len(words) ** 0.5))
    lines, current = [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if current and face.getlength(candidate) > target:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    return lines


def render_text(
    text: str,
    size: int = 224,
    *,
    font: str = DEFAULT_FONT,
    font_size: int | None = None,
    ink: RGB = (20, 20, 20),
    background: RGB = (255, 255, 255),
) -> Image.Image:
    """``text`` written centred on a ``size`` × ``size`` RGB square (dark ink on white by default).

    The font size starts at ``font_size`` (default: 40 % of the side) and shrinks until the text
    fits 94 % × 90 % of the square.
    """
    text = " ".join(text.split()) or " "
    image = Image.new("RGB", (size, size), background)
    start = font_size or max(MIN_FONT_PX, int(size * 0.4))
    mask, _ = text_mask(text, int(size * 0.94), int(size * 0.9), font=font, size=start)
    w, h = mask.size
    image.paste(Image.new("RGB", (w, h), ink), ((size - w) // 2, (size - h) // 2), mask)
    return image
