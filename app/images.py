"""Image conversions shared by dataset reading (precompute) and uploads (web).

One ``to_rgb`` for both sides, so that a live analysis of an image sees exactly the pixels the
precompute pass saw for the same file.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (transparency composited on ``background``)."""
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
