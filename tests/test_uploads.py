"""Uploads of every kind: real photos (scikit-image samples), every odd Pillow mode, and bad files.

Decoding is checked pixel by pixel on :func:`decode_upload`; the HTTP status of every kind (good
and bad) is checked against a real uvicorn server on loopback with the live demo model.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skdata

from app.config import Settings
from app.web.uploads import UploadError, decode_upload, sniff
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, gradient_rgb, live_server

LIMIT = 2_000_000
MAX_PIXELS = 40_000_000


def decode(data: bytes):
    return decode_upload(data, max_pixels=MAX_PIXELS)


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------ files of every kind


def photo(name: str) -> Image.Image:
    array = getattr(skdata, name)()
    return Image.fromarray(array, "L" if array.ndim == 2 else "RGB")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def rgba_png() -> bytes:
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent black
    image.paste((200, 30, 40, 255), (0, 0, 20, 40))  # opaque red left half
    return encode(image, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red ink


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).round().astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    return encode(image, "PNG"), ramp


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ((220, 20, 20), (20, 200, 20), (20, 20, 220))]
    buffer = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    image = gradient_rgb((64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    return encode(image, "JPEG", quality=95, exif=exif.tobytes()), image


GOOD_FILES = {
    "astronaut.png": lambda: encode(photo("astronaut"), "PNG"),
    "coffee.jpg": lambda: encode(photo("coffee"), "JPEG", quality=90),
    "chelsea.webp": lambda: encode(photo("chelsea"), "WEBP", quality=80),
    "camera-grey.png": lambda: encode(photo("camera"), "PNG"),
    "chelsea.bmp": lambda: encode(photo("chelsea").resize((150, 100)), "BMP"),
    "coffee.tiff": lambda: encode(photo("coffee").resize((150, 100)), "TIFF", compression="tiff_lzw"),
    "rgba.png": rgba_png,
    "palette.gif": lambda: encode(gradient_rgb().convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
    "animated.gif": animated_gif,
    "cmyk.jpg": cmyk_jpeg,
    "16bit.png": lambda: sixteen_bit_png()[0],
    "exif-rotated.jpg": lambda: exif_rotated_jpeg()[0],
    "la.png": lambda: encode(Image.new("LA", (20, 20), (90, 128)), "PNG"),
    "bilevel.png": lambda: encode(Image.new("1", (20, 20), 1), "PNG"),
    "float.tiff": lambda: encode(
        Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20), "F"), "TIFF"
    ),
}


def truncated_jpeg() -> bytes:
    full = encode(photo("coffee"), "JPEG", quality=90)
    return full[: len(full) // 3]


def corrupt_jpeg() -> bytes:
    full = bytearray(encode(photo("chelsea"), "JPEG", quality=90))
    rng = np.random.default_rng(0)
    start = 600
    full[start:] = rng.integers(0, 256, len(full) - start, dtype=np.uint8).tobytes()
    return bytes(full)


BAD_FILES: dict[str, tuple[bytes, int, str]] = {
    "drawing.svg": (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10"/></svg>',
        415,
        "SVG",
    ),
    "bare.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', 415, "SVG"),
    "notes.txt": (b"just some text, not an image\n" * 10, 415, "text"),
    "doc.pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n", 415, "PDF"),
    "archive.zip": (b"PK\x03\x04" + b"\0" * 100, 415, "ZIP"),
    "figure.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", 415, "EPS"),
    "page.html": (b"<!doctype html><html><body>hi</body></html>", 415, "HTML"),
    "empty.png": (b"", 422, "empty"),
    "bomb-huge.png": (png_header(100_000, 100_000), 413, "pixels"),
    "bomb-over-limit.png": (png_header(8_000, 6_000), 413, "pixels"),
    "header-only.png": (png_header(64, 64)[:40], 422, "PNG"),
}


# --------------------------------------------------------------------------- decoding tests


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_every_good_kind_decodes_to_rgb(name: str) -> None:
    decoded = decode(GOOD_FILES[name]())
    assert decoded.image.mode == "RGB"
    assert decoded.image.width > 0 and decoded.image.height > 0
    assert np.asarray(decoded.image).std() >= 0  # pixels are readable


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
def test_real_photos_keep_their_pixels(name: str) -> None:
    original = photo(name)
    decoded = decode(encode(original, "PNG"))
    assert decoded.format == "PNG" and decoded.mode == original.mode
    assert np.array_equal(np.asarray(decoded.image), np.asarray(original.convert("RGB")))


def test_transparency_is_composited_on_white() -> None:
    image = rgb(decode(rgba_png()).image)
    assert (image[:, 25:] == 255).all()  # transparent half → white
    assert (np.abs(image[:, :15] - (200, 30, 40)) <= 1).all()  # opaque half keeps its colour


def test_cmyk_becomes_the_right_colour() -> None:
    decoded = decode(cmyk_jpeg())
    assert decoded.mode == "CMYK"
    r, g, b = rgb(decoded.image).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60, (r, g, b)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    data, ramp = sixteen_bit_png()
    decoded = decode(data)
    assert decoded.mode.startswith("I")
    grey = rgb(decoded.image)[..., 0]
    assert np.abs(grey - ramp / 257.0).max() <= 1.0
    assert grey.min() == 0 and grey.max() == 255


def test_palette_gif_keeps_colours() -> None:
    original = gradient_rgb()
    decoded = decode(encode(original.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"))
    assert decoded.mode == "P"
    assert np.abs(rgb(decoded.image) - rgb(original)).mean() < 8


def test_animated_gif_uses_the_first_frame() -> None:
    decoded = decode(animated_gif())
    assert decoded.frames == 3
    r, g, b = rgb(decoded.image).reshape(-1, 3).mean(0)
    assert r > 180 and g < 60 and b < 60


def test_exif_orientation_is_applied() -> None:
    data, original = exif_rotated_jpeg()
    decoded = decode(data)
    assert decoded.oriented
    assert decoded.image.size == (original.height, original.width)
    expected = ImageOps.exif_transpose(Image.open(__import__("io").BytesIO(data))).convert("RGB")
    assert np.abs(rgb(decoded.image) - rgb(expected)).mean() < 1
    assert np.abs(rgb(decoded.image) - rgb(original.transpose(Image.Transpose.ROTATE_270))).mean() < 6


def test_float_and_bilevel_modes() -> None:
    grey = rgb(decode(GOOD_FILES["float.tiff"]()).image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255
    assert (rgb(decode(GOOD_FILES["bilevel.png"]()).image) == 255).all()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_every_bad_kind_is_rejected_with_status_and_message(name: str) -> None:
    data, status, word = BAD_FILES[name]
    with pytest.raises(UploadError) as info:
        decode(data)
    assert info.value.status == status, info.value.message
    assert word.lower() in info.value.message.lower(), info.value.message


@pytest.mark.parametrize("maker,status", [(truncated_jpeg, 422), (corrupt_jpeg, 422)])
def test_truncated_and_corrupt_jpegs_are_422(maker, status) -> None:
    with pytest.raises(UploadError) as info:
        decode(maker())
    assert info.value.status == status
    assert "JPEG" in info.value.message and "corrupt or truncated" in info.value.message


def test_sniffing_ignores_names_and_types() -> None:
    assert sniff(b"%PDF-1.7") == "a PDF document"
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert "SVG" in (sniff(b"  <svg></svg>") or "")


def test_default_upload_limit_is_ten_megabytes() -> None:
    assert Settings().max_upload_bytes == 10 * 1024 * 1024


# ---------------------------------------------------------------------------- HTTP statuses


@pytest.fixture(scope="module")
def server(tiny_db, demo_loaded, tmp_path_factory) -> Iterator[str]:
    url = copy_db(tiny_db.path, tmp_path_factory.mktemp("uploads_db"))  # the server writes analyses
    with live_server(url, demo_loaded, max_upload_bytes=LIMIT, max_image_pixels=MAX_PIXELS) as (
        base,
        _runner,
        _app,
    ):
        yield base


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with csrf_client(server, timeout=60) as client:  # form POSTs carry a CSRF token (app.web.csrf)
        yield client


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_http_every_good_kind_is_analysed(http: httpx.Client, name: str) -> None:
    data = GOOD_FILES[name]()
    response = http.post("/analyze.json", files={"image": (name, data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["layers"] and all(layer["neurons"] for layer in result["layers"])
    assert result["permalink"] and response.headers["location"] == result["permalink"]


def test_http_form_post_redirects_to_the_analysis(http: httpx.Client) -> None:
    data = GOOD_FILES["coffee.jpg"]()
    response = http.post("/analyze", files={"image": ("coffee.jpg", data, "image/jpeg")})
    assert response.status_code == 303
    page = http.get(response.headers["location"])
    assert page.status_code == 200 and "unit" in page.text


def test_http_raw_body_without_a_filename(http: httpx.Client) -> None:
    response = http.post(
        "/analyze.json",
        content=GOOD_FILES["chelsea.webp"](),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["image"]["source"]["format"] == "WEBP"


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_http_every_bad_kind_gets_its_status(http: httpx.Client, name: str) -> None:
    data, status, word = BAD_FILES[name]
    # lie about the type: the server must sniff the bytes
    response = http.post("/analyze.json", files={"image": ("photo.jpg", data, "image/jpeg")})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and word.lower() in body["error"].lower()


@pytest.mark.parametrize("maker", [truncated_jpeg, corrupt_jpeg])
def test_http_truncated_and_corrupt_are_422(http: httpx.Client, maker) -> None:
    response = http.post("/analyze.json", files={"image": ("x.jpg", maker(), "image/jpeg")})
    assert response.status_code == 422
    assert "corrupt or truncated" in response.json()["error"]


def test_http_html_form_shows_the_error_with_its_status(http: httpx.Client) -> None:
    data, status, _ = BAD_FILES["drawing.svg"]
    response = http.post("/analyze", files={"image": ("d.svg", data, "image/svg+xml")})
    assert response.status_code == status
    assert 'id="upload-error"' in response.text and "SVG" in response.text
    assert "<form" in response.text  # the form again, to try another file


def test_http_oversize_with_content_length_is_413(http: httpx.Client) -> None:
    response = http.post(
        "/analyze.json", content=b"\xff\xd8\xff" + b"\0" * LIMIT, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_http_oversize_chunked_body_without_content_length_is_413(http: httpx.Client) -> None:
    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:
        for _ in range(LIMIT // 65536 + 8):
            sent["bytes"] += 65536
            yield b"\0" * 65536

    request = http.build_request(
        "POST", "/analyze.json", content=body(), headers={"content-type": "image/png"}
    )
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    response = http.send(request)
    assert response.status_code == 413
    assert sent["bytes"] > LIMIT


def test_http_oversize_multipart_is_413(http: httpx.Client) -> None:
    big = encode(photo("astronaut"), "BMP")  # ~786 KB
    big = big * 3  # over the 2 MB limit; the bytes never reach the decoder
    response = http.post("/analyze", files={"image": ("big.bmp", big, "image/bmp")})
    assert response.status_code == 413
    assert "larger than the limit" in response.text


def test_http_missing_file_field_is_422(http: httpx.Client) -> None:
    response = http.post("/analyze.json", files={"other": ("x.png", b"123", "image/png")})
    assert response.status_code == 422
    assert "image" in response.json()["error"]


# ------------------------------------------------------- issue 14: bombs, frames, bounded memory


def many_frame_gif(frames: int) -> bytes:
    """A 1×1 GIF with ``frames`` frames (hand-written: Pillow would merge identical frames)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    return head + (frame + b"\x02\x02\x44\x01\x00") * frames + b"\x3b"


def multipage_tiff() -> bytes:
    pages = [gradient_rgb((32, 24)), Image.new("RGB", (32, 24), (0, 200, 0)), Image.new("L", (16, 16), 99)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def test_huge_frame_count_is_counted_boundedly() -> None:
    import time

    from app.web.uploads import MAX_COUNTED_FRAMES

    data = many_frame_gif(300_000)
    started = time.perf_counter()
    decoded = decode(data)
    assert time.perf_counter() - started < 2.0  # counting all 300,000 frames took ~1 s of CPU
    assert decoded.frames == MAX_COUNTED_FRAMES and decoded.frames_capped
    assert decode(animated_gif()).describe()["frames_capped"] is False


@pytest.mark.parametrize("maker", [animated_gif, multipage_tiff], ids=["gif", "tiff"])
def test_corrupt_or_truncated_later_frames_are_4xx_never_a_crash(maker) -> None:
    """Every truncation point and byte flips all over a multi-frame file: decoded, or a 4xx."""
    data = maker()
    rng = np.random.default_rng(14)
    variants = [data[:cut] for cut in range(8, len(data), max(1, len(data) // 60))]
    for _ in range(60):
        broken = bytearray(data)
        for pos in rng.integers(6, len(data), 4):
            broken[pos] = int(rng.integers(0, 256))
        variants.append(bytes(broken))
    for variant in variants:
        try:
            decoded = decode(variant)
        except UploadError as exc:
            assert 400 <= exc.status < 500, exc.message
        else:
            assert decoded.image.mode == "RGB"


def test_multipage_tiff_counts_pages_and_uses_the_first() -> None:
    decoded = decode(multipage_tiff())
    assert decoded.frames == 3 and not decoded.frames_capped
    assert decoded.image.size == (32, 24)


# --------------------------------------- audit: thin images, frames decoded beyond the first


THIN_SIZES = [(1, 20_000), (25_000_000, 1), (20_000, 3), (3000, 200)]


@pytest.mark.parametrize("size", THIN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_thin_images_are_cut_to_their_centre(size) -> None:
    """The model's preprocess scales the *shorter* side up to its input size: a 1×20,000 PNG
    (121 bytes) became 128×2,560,000 (1.4 GB RSS), 25,000,000×1 an OverflowError (500). The
    image handed on is at most MAX_ASPECT × its shorter side, the centre of the original."""
    from app.images import MAX_ASPECT

    width, height = size
    ramp = np.arange(max(size), dtype=np.int64) % 251
    array = (ramp[None, :] if width > height else ramp[:, None]).repeat(min(size), 1 if height > width else 0)
    original = Image.fromarray(array.astype(np.uint8).reshape(height, width), "L")
    decoded = decode(encode(original, "PNG"))
    assert (decoded.width, decoded.height) == size  # the original's size is reported
    w, h = decoded.image.size
    assert min(w, h) == min(size) and max(w, h) <= MAX_ASPECT * min(w, h)
    keep = max(w, h)
    start = (max(size) - keep) // 2  # the centre: the model's centred square is inside it
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    centre = original.crop(box)
    assert np.array_equal(np.asarray(decoded.image)[..., 0], np.asarray(centre))


def test_ordinary_aspect_ratios_are_not_cut() -> None:
    for size in ((400, 100), (100, 400), (640, 480), (1, 4)):
        assert decode(encode(gradient_rgb(size), "PNG")).image.size == size


def test_to_rgb_cuts_thin_dataset_images_too() -> None:
    """precompute reads datasets through the same ``to_rgb`` (same pixels as a live analysis)."""
    from app.images import MAX_ASPECT, to_rgb

    assert to_rgb(Image.new("L", (1, 20_000), 128)).size == (1, MAX_ASPECT)
    assert to_rgb(Image.new("RGBA", (10_000, 10), (1, 2, 3, 0))).size == (10 * MAX_ASPECT, 10)
    assert to_rgb(Image.new("RGB", (50, 400), 7)).size == (50, 200)
    assert to_rgb(Image.new("RGB", (50, 400), 7), max_aspect=None).size == (50, 400)


@pytest.mark.parametrize("size", [(1, 20_000), (25_000_000, 1)], ids=["1x20000", "25000000x1"])
def test_http_thin_images_are_analysed_with_bounded_work(http: httpx.Client, size) -> None:
    """Was: 200 after +1.36 GB RSS (1×20,000), a 500 without security headers (25,000,000×1)."""
    data = encode(Image.new("L", size, 128), "PNG")
    response = http.post("/analyze.json", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text  # analysed: the centre, 1×4 / 4×1
    assert "content-security-policy" in response.headers
    source = response.json()["image"]["source"]
    assert (source["width"], source["height"]) == size  # the original's size is reported


def gif_frame_copies(side: int, frames: int) -> tuple[bytes, bytes]:
    """(a one-frame GIF of ``side``², the same frame repeated ``frames`` times): Pillow's writer
    would merge identical frames, so the second is assembled from the first's blocks."""
    single = encode(Image.new("P", (side, side), 1), "GIF")
    flags = single[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    assert single[-1:] == b"\x3b"
    return single, single[:start] + single[start:-1] * frames + b"\x3b"


def apng_and_first_frame(side: int, frames: int) -> tuple[bytes, bytes]:
    images = [Image.new("RGB", (side, side), (9 * i, 40, 200 - 9 * i)) for i in range(frames)]
    return encode(images[0], "PNG"), encode(images[0], "PNG", save_all=True, append_images=images[1:])


def best_time(data: bytes, repeat: int = 3) -> float:
    import time

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        decode(data)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("maker,frames", [(lambda: gif_frame_copies(2000, 30), 30),
                                          (lambda: apng_and_first_frame(1000, 20), 20)],
                         ids=["gif-30x2000", "apng-20x1000"])  # fmt: skip
def test_later_frames_are_never_decoded(maker, frames) -> None:
    """Audit: 60 GIF frames of 4900×4900 (1.1 MB) took 17 s of CPU per upload (frame counting
    decoded every frame), holding both decode slots for a minute. Decoding the animation now
    costs about what its first frame alone costs (it was 30× / 10× here)."""
    single, animated = maker()
    decoded = decode(animated)
    assert decoded.frames == frames and not decoded.frames_capped
    assert decoded.image.size == decode(single).image.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(decode(single).image))
    assert best_time(animated) < 3 * best_time(single) + 0.02


def test_gif_frame_count_reads_no_image_data(monkeypatch) -> None:
    """No seek beyond the first frame (Pillow's GIF/PNG ``seek`` decodes every frame before)."""
    from PIL import GifImagePlugin, PngImagePlugin

    seeks: list[int] = []
    for plugin in (GifImagePlugin.GifImageFile, PngImagePlugin.PngImageFile):
        original = plugin.seek

        def seek(self, frame: int, _original=original) -> None:
            seeks.append(frame)
            _original(self, frame)

        monkeypatch.setattr(plugin, "seek", seek)
    assert decode(gif_frame_copies(64, 12)[1]).frames == 12
    assert decode(apng_and_first_frame(64, 5)[1]).frames == 5
    assert decode(animated_gif()).frames == 3
    assert all(frame == 0 for frame in seeks), seeks


def big(mode: str, side: int) -> Image.Image:
    """A large image with structure (a ramp), so reduction is checkable."""
    ramp = np.linspace(0, 1, side, dtype=np.float32)[None, :].repeat(side, 0)
    if mode == "I;16":
        return Image.fromarray((ramp * 65535).round().astype(np.uint16))
    rgba = np.stack([ramp * 255, 255 - ramp * 255, np.full_like(ramp, 40), np.full_like(ramp, 255)], 2)
    return Image.fromarray(rgba.round().astype(np.uint8), "RGBA").convert(mode)


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("RGBA", "PNG"), ("RGBA", "TIFF"), ("RGB", "JPEG"),
                                      ("P", "GIF")])  # fmt: skip
def test_large_images_are_reduced_while_decoding_with_the_same_colours(mode, fmt) -> None:
    from app.web.uploads import REDUCE_TARGET

    original = big(mode, 2600)
    params = {"compression": "tiff_lzw"} if fmt == "TIFF" else {"quality": 95} if fmt == "JPEG" else {}
    decoded = decode(encode(original, fmt, **params))
    assert (decoded.width, decoded.height) == (2600, 2600)  # the original's size is reported
    assert REDUCE_TARGET <= min(decoded.image.size) < 2 * REDUCE_TARGET
    from app.images import to_rgb

    reference = to_rgb(original).resize(decoded.image.size, Image.Resampling.BOX)
    assert np.abs(rgb(decoded.image) - rgb(reference)).mean() < 3


def test_pixel_cap_default_is_lower_and_bombs_are_413_from_the_header() -> None:
    import time

    assert Settings().max_image_pixels <= 25_000_000
    for width, height in ((6300, 6300), (100_000, 100_000), (40_000, 1_000)):
        started = time.perf_counter()
        with pytest.raises(UploadError) as info:
            decode_upload(png_header(width, height), max_pixels=Settings().max_image_pixels)
        assert info.value.status == 413 and time.perf_counter() - started < 0.5


MEMORY_PROBE = """
import resource, sys
data = open(sys.argv[1], "rb").read()
from app.web.uploads import decode_upload
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decoded = decode_upload(data, max_pixels=10**9)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, *decoded.image.size)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("RGBA", "PNG"), ("RGBA", "TIFF")])
def test_decoding_memory_is_bounded_by_the_decoded_pixels(mode, fmt, tmp_path) -> None:
    """Peak RSS of a decode (fresh process) stays within 1.5× the image's own pixel buffer at
    4 bytes per pixel; before issue 14 it was 5× (RGBA, LZW TIFF) to 12× (16-bit grey)."""
    import subprocess
    import sys
    from pathlib import Path

    side = 3000
    params = {"compression": "tiff_lzw"} if fmt == "TIFF" else {}
    path = tmp_path / f"big.{fmt.lower()}"
    Image.new(mode, (side, side), 900 if mode == "I;16" else (9, 8, 7, 6)).save(path, fmt, **params)
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True, timeout=120)  # fmt: skip
    extra, width, height = (int(x) for x in out.stdout.split())
    assert max(width, height) < 1024
    assert extra <= 1.5 * side * side * 4, f"{extra / 2**20:.0f} MiB for {side}x{side} {mode} {fmt}"
