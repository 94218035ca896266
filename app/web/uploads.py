"""Upload validation: size limit while streaming, format sniffing, safe decoding to RGB.

Nothing here trusts the client: the size limit is enforced on the bytes actually received (also
for chunked bodies without ``Content-Length``), the format is decided by sniffing the bytes with
an allow-list of Pillow raster decoders (never SVG, PDF or EPS/Ghostscript), the pixel count is
checked from the header *before* decoding, and every decoder failure becomes a 4xx
:class:`UploadError` with a message a person can act on.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
import warnings
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from app.images import MAX_ASPECT, crop_to_aspect, to_rgb
from app.web.middleware import BUSY_KEY

Message = MutableMapping[str, Any]

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF") + (
    ("AVIF",) if features.check("avif") else ()
)
"""Pillow decoders we accept (``JPEG`` also opens multi-picture ``MPO`` camera files)."""


# magic bytes of the raster formats we accept: a file that starts like one of them but does not
# decode is corrupt or truncated (422), anything else is an unsupported type (415)
_RASTER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", "an EPS file"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"7z\xbc\xaf", "a 7z archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "a Windows executable"),
)


class UploadError(Exception):
    """A rejected upload: HTTP ``status`` (413, 415, 422, 400) and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class DecodedImage:
    """An upload decoded to an RGB image, with what we learned about the original."""

    image: Image.Image  # RGB, EXIF orientation applied, first frame, reduced (shorter side < 1024),
    # cut to its centre when thinner than MAX_ASPECT (longer side ≤ MAX_ASPECT × shorter side)
    format: str  # Pillow format name, e.g. "PNG", "JPEG", "MPO"
    mode: str  # the original Pillow mode, e.g. "RGBA", "P", "CMYK", "I;16"
    width: int  # of the original (before orientation)
    height: int
    frames: int  # number of frames (animated GIF/WebP/TIFF pages), counted up to a limit
    oriented: bool  # an EXIF orientation was applied
    frames_capped: bool = False  # there are more than ``frames`` frames (not counted further)

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "frames_capped": self.frames_capped,
            "exif_oriented": self.oriented,
        }


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


def too_large(limit: int) -> UploadError:
    return UploadError(413, f"The upload is larger than the limit of {_mb(limit)} ({limit} bytes).")


def check_content_length(headers: Any, limit: int) -> None:
    """Reject early when the client announces a body over ``limit`` (413)."""
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError as exc:
        raise UploadError(400, "Invalid Content-Length header.") from exc
    if size > limit:
        raise too_large(limit)


DRAIN_MAX_BYTES = 32 * 1024 * 1024
DRAIN_MAX_SECONDS = 10.0


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk; 413 as soon as more than ``limit`` bytes arrive.

    Does not trust ``Content-Length`` (it is only used to fail early); works for chunked bodies.
    Before answering 413 the rest of an oversize body is read and discarded (up to
    :data:`DRAIN_MAX_BYTES` / :data:`DRAIN_MAX_SECONDS`, never stored) so that the client, still
    sending, gets the 413 instead of a connection reset.
    """
    busy = request.scope.get("state", {}).get(BUSY_KEY)
    if busy is not None:  # refused by UploadAdmission: the body was never read
        retry_after, message = busy
        raise HTTPException(503, message, headers={"Retry-After": str(retry_after)})
    stream = request.stream()
    try:
        check_content_length(request.headers, limit)
    except UploadError as exc:
        declared = int(request.headers.get("content-length", "0") or 0)
        if exc.status == 413 and declared <= DRAIN_MAX_BYTES:
            await _drain(stream)
        raise
    body = bytearray()  # grows in place: no list of chunks plus a joined copy
    try:
        async for chunk in stream:
            if len(body) + len(chunk) > limit:
                del body[:]
                await _drain(stream)
                raise too_large(limit)
            body += chunk
    except ClientDisconnect as exc:
        raise UploadError(400, "The client disconnected before the upload was complete.") from exc
    return bytes(body)


async def _drain(stream: Any) -> None:
    """Read and discard what is left of a request body, within a byte and a time budget."""
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    left = DRAIN_MAX_BYTES
    try:
        async for chunk in stream:
            left -= len(chunk)
            if left < 0 or time.monotonic() > deadline:
                break
    except ClientDisconnect:
        pass


def replay_request(request: Request, body: bytes) -> Request:
    """A new :class:`Request` on the same scope whose body is ``body`` (e.g. to parse a form
    from bytes that were already read with :func:`read_body_limited`)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


# ----------------------------------------------------------------------------------- decoding


def sniff(data: bytes) -> str | None:
    """What the bytes look like when Pillow does not accept them (for the error message)."""
    head = data[:512]
    for magic, name in _RASTER_MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        return "an SVG image (vector images are not supported)"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if text.startswith((b"<?xml", b"<")):
        return "an XML document"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "a HEIC/HEIF image (not supported; convert it to JPEG or PNG)"
    if head and _looks_like_text(head):
        return "a text file"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


#: Decoded images are reduced (box filter, while or right after decoding) until their shorter
#: side is at most twice this: the model sees a few hundred pixels, never the full resolution.
REDUCE_TARGET = 512
#: At most this many frames are counted (animated GIF/WebP/PNG, multi-page TIFF); more is
#: reported as ``frames_capped``. Counting a 660,000-frame GIF would hold a worker for a second.
#: Frames after the first are never decoded (see :func:`count_frames`).
MAX_COUNTED_FRAMES = 100
#: Bytes per pixel of the widest mode Pillow decodes an upload to (RGBA, CMYK, I, F).
BYTES_PER_PIXEL = 4
#: How long a decode waits for a free decode slot before the upload is answered 503.
DECODE_WAIT_S = 20.0

_decode_slots = threading.BoundedSemaphore(2)


def decode_slots_for(max_pixels: int, memory_bytes: int, cpus: int | None = None) -> int:
    """How many uploads may decode at once: as many full-size decodes as fit ``memory_bytes``
    (each up to ``max_pixels`` × :data:`BYTES_PER_PIXEL`, plus the same again for Pillow's
    working copies), at least 1 and at most the number of CPUs."""
    per_decode = max(1, 2 * max_pixels * BYTES_PER_PIXEL)
    return max(1, min(cpus or os.cpu_count() or 1, memory_bytes // per_decode))


def set_decode_slots(n: int) -> None:
    """Size the process-wide decode semaphore (called once by ``create_app``)."""
    global _decode_slots
    _decode_slots = threading.BoundedSemaphore(max(1, int(n)))


def decode_upload(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode untrusted bytes into an RGB image, or raise :class:`UploadError` (``HTTPException`` 503 when
    no decode slot frees up within :data:`DECODE_WAIT_S`).

    415: not one of :data:`ALLOWED_FORMATS`. 413: more than ``max_pixels`` pixels (checked from
    the header before decoding: decompression bombs). 422: a supported format that is truncated
    or corrupt (its first frame; later frames are counted, never decoded). 503: no decode slot
    freed up in time. Conversions: EXIF orientation; transparency composited on white; palette,
    greyscale, CMYK (ICC profile when present), 16/32-bit and float images to 8-bit RGB;
    animated images and multi-page files: the first frame; an image whose longer side is more
    than :data:`~app.images.MAX_ASPECT` × its shorter side is cut to its centre (the model's
    preprocess scales the shorter side up to its input size: a 1×20,000 image would become
    gigabytes after this decode). Memory: at most as many decodes run at once as
    :func:`set_decode_slots` allows, JPEGs are decoded at a reduced scale (``draft``), every image
    is reduced in strips to a shorter side of at most ``2 * REDUCE_TARGET`` before any conversion.
    """
    if not data:
        raise UploadError(422, "The upload is empty: choose an image file.")
    looks_like = sniff(data)
    slots = _decode_slots
    if not slots.acquire(timeout=DECODE_WAIT_S):
        raise HTTPException(503, "The server is busy decoding other images; retry in a few seconds.",
                            headers={"Retry-After": "5"})
    try:
        return _decode(data, looks_like, max_pixels)
    finally:
        slots.release()


def _decode(data: bytes, looks_like: str | None, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(413, f"The image has too many pixels to decode safely ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise _not_an_image(looks_like) from exc
    except Exception as exc:  # Pillow raises many types (SyntaxError, ValueError, struct.error...)
        if looks_like in ALLOWED_FORMATS:
            raise _corrupt(looks_like, exc) from exc
        raise _not_an_image(looks_like) from exc
    with image:
        fmt = image.format or looks_like or "unknown"
        width, height = image.size
        if width <= 0 or height <= 0:
            raise UploadError(422, f"The {fmt} image has no pixels ({width}×{height}).")
        if width * height > max_pixels:
            raise UploadError(
                413,
                f"The image is {width}×{height} = {width * height:,} pixels; the limit is "
                f"{max_pixels:,} pixels. Downscale it and try again.",
            )
        mode = image.mode
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                frames, capped = count_frames(image, data)
                orientation = _orientation(image)
                if fmt in ("JPEG", "MPO"):
                    image.draft(None, (REDUCE_TARGET, REDUCE_TARGET))  # DCT scaling: 1/2..1/8
                image.load()
        except UploadError:
            raise
        except Exception as exc:
            raise _corrupt(fmt, exc) from exc
        try:
            rgb = reduce_to_rgb(image, REDUCE_TARGET)
        except Exception as exc:
            raise UploadError(
                415, f"The {fmt} image uses colour mode {mode!r}, which cannot be converted to RGB."
            ) from exc
    oriented = orientation in _TRANSPOSE
    if oriented:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return DecodedImage(rgb, fmt, mode, width, height, frames, oriented, capped)


def count_frames(image: Image.Image, data: bytes, limit: int = MAX_COUNTED_FRAMES) -> tuple[int, bool]:
    """(frames, capped): the number of frames, counted up to ``limit``; ``capped`` when there are
    more. No frame is decoded and the image stays on its first frame: GIF frames are counted by
    walking the file's blocks (Pillow's ``seek`` decodes every frame before the one it goes to:
    60 frames of 4900×4900 took 17 s), TIFF pages by reading their directories (``seek`` there
    reads tags only), and the other formats' counts come from their headers (APNG ``acTL``,
    WebP/AVIF containers, MPO index)."""
    if image.format == "GIF":
        return gif_frames(data, limit)
    if image.format == "TIFF":
        count = 1
        try:
            while count <= limit:
                image.seek(count)  # reads the page's directory, decodes nothing
                count += 1
        except EOFError:
            return count, False
        finally:
            image.seek(0)
        return limit, True
    declared = getattr(image, "n_frames", 1)  # set from the header by these plugins
    frames = declared if isinstance(declared, int) and declared > 0 else 1
    return (limit, True) if frames > limit else (frames, False)


def gif_frames(data: bytes, limit: int = MAX_COUNTED_FRAMES) -> tuple[int, bool]:
    """(frames, capped): the image descriptors of a GIF, counted up to ``limit`` by skipping
    over blocks (no LZW decoding; time proportional to the file's size over 255). A truncated
    or malformed tail ends the count (the first frame alone is decoded, by Pillow)."""
    size = len(data)
    if size < 13:
        return 1, False
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    count = 0
    while pos < size:
        block = data[pos]
        if block == 0x2C:  # image descriptor: 9 bytes, local colour table, LZW code size, data
            if pos + 10 > size:
                break
            packed = data[pos + 9]
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0) + 1
            count += 1
            if count > limit:
                return limit, True
            pos = _skip_sub_blocks(data, pos)
        elif block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        else:  # 0x3B trailer, or bytes Pillow would not read either
            break
    return max(1, count), False


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """The position after the GIF sub-blocks starting at ``pos`` (ended by a zero length)."""
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            break
    return pos


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or malformed: a bad EXIF block is not fatal)."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if value in _TRANSPOSE else 1
    except Exception:
        return 1


def reduce_to_rgb(image: Image.Image, target: int = REDUCE_TARGET) -> Image.Image:
    """``to_rgb(image)``, first cut to :data:`MAX_ASPECT` (:func:`app.images.crop_to_aspect`),
    then box-reduced by an integer factor so that its shorter side stays at or above ``target``
    (no reduction below ``2 * target``). The reduction runs on strips of rows converted one at a
    time, so no full-size RGB/float copy of a large image is ever made."""
    image = crop_to_aspect(image, MAX_ASPECT)
    width, height = image.size
    factor = min(width, height) // target
    if factor < 2:
        return to_rgb(image, max_aspect=None)
    if image.mode in ("I", "F", "RGB") or (image.mode == "L" and "transparency" not in image.info):
        # (I, F: to_rgb scales by the whole image's range)
        return to_rgb(image.reduce(factor), max_aspect=None)
    if image.mode.startswith("I;16"):  # to_rgb scales 16-bit by 1/257: same on the box means
        means = np.asarray(_reduce_strips(image, factor, "I"), dtype=np.float64)
        grey = np.clip(np.round(means / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return _reduce_strips(image, factor, "RGB")


def _reduce_strips(image: Image.Image, factor: int, mode: str) -> Image.Image:
    """``image`` converted to ``mode`` (``RGB``: by :func:`to_rgb`) and box-reduced by
    ``factor``, a strip of rows at a time (memory: the output plus one strip)."""
    width, height = image.size
    out_w, out_h = width // factor, height // factor
    out = Image.new(mode, (out_w, out_h))
    rows = factor * max(1, 64 // factor + 1)  # a whole number of output rows per strip
    for top in range(0, out_h * factor, rows):
        strip = image.crop((0, top, out_w * factor, min(top + rows, out_h * factor)))
        strip = to_rgb(strip, max_aspect=None) if mode == "RGB" else strip.convert(mode)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _not_an_image(looks_like: str | None) -> UploadError:
    allowed = ", ".join(ALLOWED_FORMATS)
    if looks_like in ALLOWED_FORMATS:
        return UploadError(
            422, f"The file starts like a {looks_like} image but cannot be decoded (corrupt or truncated)."
        )
    what = f"This looks like {looks_like}" if looks_like else "This is not an image format we can read"
    return UploadError(415, f"{what}. Upload a raster image: {allowed}.")


def _corrupt(fmt: str, exc: BaseException) -> UploadError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UploadError(422, f"The {fmt} image is corrupt or truncated and cannot be decoded ({reason}).")


def centre_square(image: Image.Image, side: int) -> Image.Image:
    """The centred square crop the model sees (shortest side resized to ``side``)."""
    return ImageOps.fit(image, (side, side), Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def tune_malloc(arenas: int = 2, mmap_threshold: int = 1024 * 1024) -> bool:
    """Keep a server's RSS close to what it uses (glibc only; call before threads start):
    at most ``arenas`` malloc arenas (one per thread by default: 40 worker threads each keep
    freed upload buffers), and a fixed mmap threshold so that large buffers (decoded images,
    request bodies) are returned to the system when freed instead of fragmenting the heap."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_arena_max, m_mmap_threshold = -8, -3
        arenas_ok = bool(libc.mallopt(m_arena_max, arenas))
        return arenas_ok and bool(libc.mallopt(m_mmap_threshold, mmap_threshold))
    except (OSError, AttributeError):
        return False
