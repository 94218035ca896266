"""Image conversions shared by dataset reading (precompute) and uploads (web).

One ``to_rgb`` for both sides, so that a live analysis of an image sees exactly the pixels the
precompute pass saw for the same file. Both also cut very thin images (aspect ratio over
:data:`MAX_ASPECT`) to their centre: the model's preprocess resizes the *shorter* side to its
input size, so a 1×20,000 image would otherwise become a 128×2,560,000 one (gigabytes, or an
``OverflowError`` in the resize). The crop keeps the centre square the model sees.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)

#: The longest side of an image handed on is at most this many times its shorter side: longer
#: sides are cut to their centre (the model's view, a centred square, is inside that centre).
MAX_ASPECT = 4


def crop_to_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """``image`` unchanged when its longer side is at most ``max_aspect`` × its shorter side,
    else its centre with the longer side cut to ``max_aspect`` × the shorter side (at least 1)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    keep = max(1, int(max_aspect * short))
    if long <= keep:
        return image
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


def to_rgb(
    image: Image.Image, background: tuple[int, int, int] = WHITE, *, max_aspect: float | None = MAX_ASPECT
) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (transparency composited on ``background``); an
    image thinner than ``max_aspect`` is first cut to its centre (:func:`crop_to_aspect`;
    ``None``: never, e.g. for strips of a larger image)."""
    if max_aspect is not None:
        cropped = crop_to_aspect(image, max_aspect)
        if cropped is not image:
            image = cropped
            if image.mode == "RGB":
                return image  # already a new image
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16L, I;16N, F: scale to 8 bits
        return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or (
            image.palette is not None and image.palette.mode == "RGBA"
        )
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode in ("L", "1") and "transparency" in image.info:
        return to_rgb(image.convert("RGBA"), background)
    if mode == "LAB":
        from PIL import ImageCms

        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(image, lab, srgb, outputMode="RGB")
    return image.convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK → RGB through the embedded ICC profile when there is one, else Pillow's formula."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            target = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, source, target, outputMode="RGB")
        except Exception:
            pass
    return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """High-bit-depth greyscale → uint8: 16-bit ranges scale by 1/257, others min–max."""
    values = array.astype(np.float64)
    if values.ndim > 2:
        values = values[..., 0]
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if array.dtype.kind == "f":
        if lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        else:
            scaled = (values - lo) / (hi - lo or 1.0) * 255.0
    elif lo >= 0 and hi <= 255 and array.dtype.itemsize > 2:  # 32-bit ints holding 8-bit data
        scaled = values
    elif lo >= 0 and hi <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - lo) / (hi - lo or 1.0) * 255.0
    return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def public_dataset_name(dataset: str) -> str:
    """A dataset's name as the web shows it: absolute filesystem paths are cut to their last
    component (``/home/me/photos`` → ``photos``, ``wds:/srv/shards/{0..9}.tar`` →
    ``wds:{0..9}.tar``), so no page or JSON reveals where the server keeps its files."""
    import posixpath
    import re

    prefix, sep, rest = dataset.partition(":")
    if sep and re.fullmatch(r"[a-z][a-z0-9+.-]*", prefix) and rest.startswith(("/", "~")):
        return f"{prefix}:{public_dataset_name(rest)}"
    if dataset.startswith(("/", "~")) or re.match(r"[A-Za-z]:[\\/]", dataset):
        name = posixpath.basename(dataset.replace("\\", "/").rstrip("/"))
        return name or "dataset"
    return dataset
