"""Upload validation: size limit while streaming, format sniffing, safe decoding to RGB.

Nothing here trusts the client: the size limit is enforced on the bytes actually received (also
for chunked bodies without ``Content-Length``), the format is decided by sniffing the bytes with
an allow-list of Pillow raster decoders (never SVG, PDF or EPS/Ghostscript), the pixel count is
checked from the header *before* decoding, and every decoder failure becomes a 4xx
:class:`UploadError` with a message a person can act on.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError, features
from starlette.requests import ClientDisconnect, Request

from app.images import to_rgb

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

    image: Image.Image  # RGB, EXIF orientation applied, first frame
    format: str  # Pillow format name, e.g. "PNG", "JPEG", "MPO"
    mode: str  # the original Pillow mode, e.g. "RGBA", "P", "CMYK", "I;16"
    width: int  # of the original (before orientation)
    height: int
    frames: int  # number of frames (animated GIF/WebP/TIFF pages); only the first is used
    oriented: bool  # an EXIF orientation was applied

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
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
    stream = request.stream()
    try:
        check_content_length(request.headers, limit)
    except UploadError as exc:
        declared = int(request.headers.get("content-length", "0") or 0)
        if exc.status == 413 and declared <= DRAIN_MAX_BYTES:
            await _drain(stream)
        raise
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                chunks.clear()
                await _drain(stream)
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise UploadError(400, "The client disconnected before the upload was complete.") from exc
    return b"".join(chunks)


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


def decode_upload(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode untrusted bytes into an RGB image, or raise :class:`UploadError`.

    415: not one of :data:`ALLOWED_FORMATS`. 413: more than ``max_pixels`` pixels (checked from
    the header before decoding: decompression bombs). 422: a supported format that is truncated
    or corrupt. Conversions: EXIF orientation; transparency composited on white; palette,
    greyscale, CMYK (ICC profile when present), 16/32-bit and float images to 8-bit RGB;
    animated images and multi-page files: the first frame.
    """
    if not data:
        raise UploadError(422, "The upload is empty: choose an image file.")
    looks_like = sniff(data)
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
        frames = int(getattr(image, "n_frames", 1) or 1)
        mode = image.mode
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.seek(0)
                image.load()
        except UploadError:
            raise
        except Exception as exc:
            raise _corrupt(fmt, exc) from exc
        oriented, image_oriented = _apply_orientation(image)
        try:
            rgb = to_rgb(image_oriented)
        except Exception as exc:
            raise UploadError(
                415, f"The {fmt} image uses colour mode {mode!r}, which cannot be converted to RGB."
            ) from exc
    return DecodedImage(rgb, fmt, mode, width, height, frames, oriented)


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


def _apply_orientation(image: Image.Image) -> tuple[bool, Image.Image]:
    """Apply the EXIF orientation tag (a malformed EXIF block is ignored, not fatal)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        return False, image
    if orientation in (None, 1):
        return False, image
    try:
        return True, ImageOps.exif_transpose(image)
    except Exception:
        return False, image


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """A copy no larger than ``max_side`` on its longer side (high-quality resampling)."""
    copy = image.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy


def centre_square(image: Image.Image, side: int) -> Image.Image:
    """The centred square crop the model sees (shortest side resized to ``side``)."""
    return ImageOps.fit(image, (side, side), Image.Resampling.BICUBIC, centering=(0.5, 0.5))
