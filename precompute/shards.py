"""webdataset tar shards as a precompute dataset, and ``conceptscope dataset shard`` to write them.

A shard spec is what open_clip's ``--train-data`` takes: brace notation
(``shards/train-{0000..0127}.tar``), ``pipe:`` commands (``pipe:curl -s https://host/a-{0..9}.tar``
or ``pipe:cat x.tar``), several specs joined with ``::``. Samples are grouped the webdataset way
(files sharing a key up to the first dot of their name); the image is the sample's ``jpg``,
``jpeg``, ``png`` or ``webp`` file, the caption its ``txt`` (or the ``caption``/``text`` field of
its ``json``, which is also kept as the image's metadata).

The dataset is ordered and indexed like every other source: opening it scans each shard's tar
headers once (a local shard is read by seeking over its members; a ``pipe:`` shard is streamed
once) to learn its sample keys, so positions are known and a run can resume. During the pass
each shard is streamed through webdataset's tar iterator, in order; batches never straddle
shards, so a run resumes at the shard (and batch) where its checkpoint stopped, and under
``torchrun`` every rank reads only its own shards. A sample without a readable image (corrupt
bytes, missing image file, a shard truncated mid-way) is skipped and counted like a corrupt file
in a folder. :mod:`precompute.shard_writer` writes shards from a folder or list.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from app.images import to_rgb
from precompute.sources import Dataset, DatasetError, Item, _describe, _jsonable

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "json")  # the caption: the txt file, else the caption/text field of the json
SPEC_SEPARATOR = "::"
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def is_shard_spec(spec: str) -> bool:
    """Whether ``spec`` names webdataset shards (``pipe:`` or a ``.tar`` path, braces allowed)."""
    spec = spec.strip()
    if spec.startswith("pipe:"):
        return True
    return any(re.search(r"\.(tar|tgz|tar\.gz)(\}|$)", part.strip()) for part in spec.split(SPEC_SEPARATOR))


def expand_urls(spec: str) -> list[str]:
    """Shard URLs of a spec: brace expansion per ``::``-separated part (as open_clip does)."""
    from webdataset.shardlists import expand_urls as wds_expand

    urls = wds_expand(spec.strip())
    if not urls:
        raise DatasetError(f"no shards in {spec!r}")
    return urls


def _local(url: str) -> Path | None:
    if url.startswith("pipe:") or "://" in url:
        return None
    return Path(url.removeprefix("file:")).expanduser()


def _name(url: str) -> str:
    """A short, stable name for a shard: its file name (the last word of a ``pipe:`` command)."""
    last = url.split()[-1] if url.startswith("pipe:") else url
    return last.rstrip("/").rsplit("/", 1)[-1] or url


def _prefix(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def scan_shard(url: str) -> tuple[list[str], str | None]:
    """The sample keys of one shard in order, and an error if the shard ends early (truncated).

    Raises :class:`DatasetError` if the shard cannot be opened at all.
    """
    from webdataset.gopen import gopen

    keys: list[str] = []
    local = _local(url)
    try:
        if local is not None:
            if not local.is_file():
                raise DatasetError(f"shard not found: {url}")
            tar = tarfile.open(local, "r:*")
        else:
            tar = tarfile.open(fileobj=gopen(url, "rb"), mode="r|*")
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable shard
        raise DatasetError(f"cannot open shard {url}: {_describe(exc)}") from exc
    error = None
    try:
        with tar:
            for info in tar:
                if not info.isreg() or _META.match(info.name):
                    continue
                prefix, suffix = _prefix(info.name)
                if prefix is None:
                    continue
                if not keys or keys[-1] != prefix:
                    keys.append(prefix)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt tar: keep what was listed
        error = _describe(exc)
    return keys, error


class ShardDataset(Dataset):
    """Samples of webdataset shards, in shard order then tar order (see module docstring)."""

    def __init__(self, spec: str, urls: list[str], keys: list[list[str]], errors: dict[int, str]):
        self.spec = spec
        self.urls = urls
        self.shard_keys = keys
        self.shard_errors = errors  # shard index -> why it ended early
        self.offsets = [0]
        for shard in keys:
            self.offsets.append(self.offsets[-1] + len(shard))
        self.names = [_name(u) for u in urls]
        if len(set(self.names)) != len(self.names):  # same file names in different folders
            self.names = [f"{i:05d}-{n}" for i, n in enumerate(self.names)]

    def __len__(self) -> int:
        return self.offsets[-1]

    def parts(self) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi in zip(self.offsets, self.offsets[1:], strict=False) if hi > lo]

    def locate(self, position: int) -> tuple[int, int]:
        """``(shard index, index in shard)`` of a position."""
        import bisect

        if not 0 <= position < len(self):
            raise IndexError(position)
        shard = bisect.bisect_right(self.offsets, position) - 1
        return shard, position - self.offsets[shard]

    def key(self, position: int) -> str:
        shard, index = self.locate(position)
        return f"{self.names[shard]}/{self.shard_keys[shard][index]}"

    def _samples(self, shard: int) -> Iterator[dict[str, Any] | str]:
        """The shard's samples through webdataset's tar iterator; a string (the error) last if
        the shard could not be read to its end."""
        from webdataset.tariterators import tarfile_samples

        failures: list[BaseException] = []

        def handler(exc: BaseException) -> bool:
            failures.append(exc)
            return False  # stop this shard; the positions not seen are reported as unreadable

        yield from tarfile_samples([{"url": self.urls[shard]}], handler=handler)
        if failures:
            yield _describe(failures[0])

    def iter_raw(self, positions: list[int]) -> Iterator[tuple[int, Any]]:
        """Stream each shard once, yielding the wanted positions in the order given (ascending
        within a shard)."""
        i = 0
        while i < len(positions):
            shard, _ = self.locate(positions[i])
            run = []
            while i < len(positions) and self.locate(positions[i])[0] == shard:
                run.append(positions[i])
                i += 1
            yield from self._stream(shard, run)

    def _stream(self, shard: int, wanted: list[int]) -> Iterator[tuple[int, Any]]:
        base, keys = self.offsets[shard], self.shard_keys[shard]
        pending = list(wanted)
        stream = self._samples(shard)
        error = self.shard_errors.get(shard, "the sample is not in the shard")
        try:
            index = 0  # next index in the shard the stream should give
            for sample in stream:
                if not pending:
                    break
                if isinstance(sample, str):
                    error = sample
                    break
                key = sample.get("__key__")
                try:
                    found = keys.index(key, index)
                except ValueError:
                    continue  # not in the index (the shard changed since it was scanned)
                index = found + 1
                while pending and pending[0] - base < found:  # skipped by the stream
                    yield pending.pop(0), f"missing from {self.names[shard]}"
                if pending and pending[0] - base == found:
                    yield pending.pop(0), sample
        finally:
            stream.close()
        for position in pending:  # the shard ended early
            yield position, f"{self.names[shard]} unreadable here: {error}"

    def decode(self, position: int, raw: Any) -> Item:
        key = self.key(position)
        if isinstance(raw, str) or raw is None:
            return Item(position, key, None, error=raw or "unreadable")
        caption, meta = None, {}
        text_key, json_key = CAPTION_KEYS  # a sample's txt caption wins over its json's caption
        try:
            if json_key in raw:
                meta = json.loads(raw[json_key])
                if isinstance(meta, dict):
                    caption = meta.get("caption") or meta.get("text")
                    meta = _jsonable(meta)
                else:
                    meta = {"json": _jsonable(meta)}
            if text_key in raw:
                caption = raw[text_key].decode("utf-8").strip()
        except (ValueError, UnicodeDecodeError) as exc:
            return Item(position, key, None, error=f"bad caption: {_describe(exc)}")
        data = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
        if data is None:
            found = ", ".join(sorted(k for k in raw if not k.startswith("__"))) or "nothing"
            return Item(position, key, None, caption, error=f"no image ({'/'.join(IMAGE_KEYS)}): has {found}")
        try:
            image = decode_image(data)
        except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable"
            return Item(position, key, None, caption, error=_describe(exc))
        return Item(position, key, image, caption, meta)

    def load(self, position: int) -> Item:
        """Random access (slow: streams the shard up to the sample); the pass never needs it."""
        return next(iter(self.iter_raw_decoded([position])))

    def iter_raw_decoded(self, positions: list[int]) -> Iterator[Item]:
        for position, raw in self.iter_raw(positions):
            yield self.decode(position, raw)


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully into RGB with the EXIF orientation applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)


def open_shards(spec: str) -> ShardDataset:
    """Index the shards of ``spec`` (tar headers only) and return the dataset."""
    urls = expand_urls(spec)
    keys, errors = [], {}
    for i, url in enumerate(urls):
        shard_keys, error = scan_shard(url)
        keys.append(shard_keys)
        if error:
            errors[i] = error
    data = ShardDataset(spec.strip(), urls, keys, errors)
    if len(data) == 0:
        raise DatasetError(f"the shards of {spec!r} hold no samples")
    return data
