"""Dataset sources for precompute: image folders, CSV/JSONL lists of paths, and ``demo:N``.

A dataset is an indexable, ordered list of items (deterministic order, known length), so a run
can resume at a position and re-read any image by its position later. :func:`open_dataset`
parses a spec:

* a folder: every ``.jpg .jpeg .png .webp .gif .bmp`` below it (recursive), sorted by path;
* a ``.csv`` (columns ``path`` and optional ``caption``; header required) or ``.jsonl`` file
  (objects with ``path`` and optional ``caption``), paths relative to the file;
* ``demo:N``: the first N held-out renderings of :mod:`precompute.demo_world`.

Loading an item never raises: an unreadable or corrupt image comes back as an :class:`Item`
with ``error`` set. Images are converted to RGB with their EXIF orientation applied.
:func:`iter_batches` decodes and preprocesses in a thread pool ahead of the consumer, so
decoding overlaps with the model. Threads rather than a torch ``DataLoader``: on the 2-core dev
machine (200 photos, demo model, 128 px) decoding alone ran at ~600 img/s with 2 threads versus
~200 img/s for a 2-worker DataLoader (worker start-up dominates) and ~320 img/s in one thread;
with the model running both were within noise of each other (~180-210 img/s), and threads
need no pickling, no start method care and no extra memory per worker.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFile, ImageOps

from app.images import to_rgb
from app.neurons.activations import split_preprocess
from precompute import shards
from precompute.sources import Dataset, DatasetError, Item, _describe, _jsonable

__all__ = ["Dataset", "DatasetError", "Item", "open_dataset", "read_image", "to_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
DEMO_PREFIX = "demo:"

# Truncated files must fail loudly (reported as corrupt), not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class FileListDataset(Dataset):
    """Images at paths (folder contents or a list file), with optional captions."""

    def __init__(self, spec: str, root: Path, entries: list[tuple[str, str | None]]):
        self.spec = spec
        self.root = root
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, position: int) -> str:
        return self.entries[position][0]

    def load(self, position: int) -> Item:
        key, caption = self.entries[position]
        try:
            image = read_image(self.root / key)
        except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable"
            return Item(position, key, None, caption, error=_describe(exc))
        return Item(position, key, image, caption)


class DemoDataset(Dataset):
    """``demo:N``: held-out renderings of the demo world, with their ground truth as meta."""

    def __init__(self, n: int):
        try:
            from precompute import demo_world
        except ImportError as exc:
            raise DatasetError(f"demo datasets need precompute.demo_world, which failed: {exc}") from exc
        self.world = demo_world
        self.n = n
        self.spec = f"{DEMO_PREFIX}{n}"

    def __len__(self) -> int:
        return self.n

    def key(self, position: int) -> str:
        return f"heldout/{position}"

    def load(self, position: int) -> Item:
        key = self.key(position)
        try:
            sample = self.world.render(self.world.HELDOUT_SEED, position)
        except Exception as exc:  # noqa: BLE001
            return Item(position, key, None, error=_describe(exc))
        return Item(position, key, sample.image.convert("RGB"), sample.caption, _jsonable(sample.truth))


def open_dataset(spec: str) -> Dataset:
    """Parse a dataset spec (folder, ``.csv``/``.jsonl`` list, webdataset shards, or ``demo:N``)."""
    spec = str(spec).strip()
    if shards.is_shard_spec(spec):
        return shards.open_shards(spec)
    if spec.startswith(DEMO_PREFIX):
        text = spec.removeprefix(DEMO_PREFIX)
        if not text.isdigit() or int(text) <= 0:
            raise DatasetError(f"bad demo dataset {spec!r}: expected demo:N with N > 0, e.g. demo:2000")
        return DemoDataset(int(text))
    path = Path(spec).expanduser()
    if path.is_dir():
        root = path.resolve()
        files = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise DatasetError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) found under {root}")
        return FileListDataset(str(root), root, [(f, None) for f in files])
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        path = path.resolve()
        entries = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
        if not entries:
            raise DatasetError(f"{path} lists no images")
        return FileListDataset(str(path), path.parent, entries)
    if path.exists():
        raise DatasetError(f"{spec}: expected a folder of images, a .csv or .jsonl file, or demo:N")
    raise DatasetError(f"dataset not found: {spec} (a folder, a .csv/.jsonl file, or demo:N)")


def _read_csv(path: Path) -> list[tuple[str, str | None]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise DatasetError(f"{path}: a header row with a 'path' column is required")
        return [(_rel(row["path"]), row.get("caption") or None) for row in reader if row.get("path")]


def _read_jsonl(path: Path) -> list[tuple[str, str | None]]:
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            entries.append((_rel(str(obj["path"])), obj.get("caption")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{n}: expected an object with a 'path' ({exc})") from exc
    return entries


def _rel(text: str) -> str:
    return Path(text.strip()).as_posix()


def read_image(path: Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image with its EXIF orientation applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)


# --- preprocessing and batching --------------------------------------------------------------


@dataclass
class Prepared:
    """A loaded item ready for the model: the model-view image and its tensor (or an error)."""

    item: Item
    view: Image.Image | None = None
    pixels: torch.Tensor | None = None


@dataclass
class Batch:
    """A contiguous range of dataset positions; ``items`` holds the readable ones."""

    start: int
    stop: int
    prepared: list[Prepared]  # readable items, in position order
    errors: list[Item]  # unreadable items
    pixels: torch.Tensor | None  # (len(prepared), 3, S, S), None when nothing was readable

    @property
    def positions(self) -> list[int]:
        return [p.item.position for p in self.prepared]


_UNREAD = object()


def prepare(
    dataset: Dataset, position: int, view: Callable, to_tensor: Callable, raw: Any = _UNREAD
) -> Prepared:
    """Load item ``position`` (or decode its ``raw`` bytes from :meth:`Dataset.iter_raw`) and
    preprocess it (errors are kept, never raised)."""
    item = dataset.load(position) if raw is _UNREAD else dataset.decode(position, raw)
    if item.image is None:
        return Prepared(item)
    try:
        seen = view(item.image)
        return Prepared(item, seen, to_tensor(seen))
    except Exception as exc:  # noqa: BLE001
        item.error = _describe(exc)
        item.image = None
        return Prepared(item)


class BatchLoader:
    """Batches of fixed position ranges, decoded ahead in threads.

    By default the ranges are :meth:`Dataset.batch_ranges` from ``start``; ``ranges`` gives
    them explicitly (a rank's share under torchrun). Decoding starts as soon as the loader is
    built, so it overlaps with whatever the caller does before iterating (model set-up,
    database set-up). Batch boundaries depend only on the dataset's parts and ``batch_size``
    (resuming at a batch boundary reproduces the same batches). Decoding (Pillow) and tensor
    ops release the GIL, so a thread pool overlaps with the model without the start-up cost of
    worker processes. Streamed sources (webdataset shards) are read in this thread, in order,
    and decoded in the pool. Iterate once; :meth:`close` (or leaving a ``with`` block) drops
    the work queued ahead.
    """

    def __init__(
        self,
        dataset: Dataset,
        preprocess: Callable[[Image.Image], torch.Tensor],
        batch_size: int,
        *,
        start: int = 0,
        ranges: list[tuple[int, int]] | None = None,
        workers: int = 2,
        prefetch_batches: int = 2,
        pin_memory: bool = False,
    ):
        self.dataset, self.batch_size, self.start = dataset, batch_size, start
        self.pin_memory = pin_memory  # page-locked batches: asynchronous copies to a GPU
        self.ranges = dataset.batch_ranges(batch_size, start) if ranges is None else list(ranges)
        self._view, self._to_tensor = split_preprocess(preprocess)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
        self._pending: deque[Future[Prepared]] = deque()
        self._raw = dataset.iter_raw([p for lo, hi in self.ranges for p in range(lo, hi)])
        self._lookahead = batch_size * (prefetch_batches + 1)
        self._fill()

    @property
    def n_items(self) -> int:
        """Items in this loader's ranges."""
        return sum(hi - lo for lo, hi in self.ranges)

    def _fill(self) -> None:
        while len(self._pending) < self._lookahead:
            try:
                position, raw = next(self._raw)
            except StopIteration:
                return
            self._pending.append(
                self._pool.submit(prepare, self.dataset, position, self._view, self._to_tensor, raw)
            )

    def __iter__(self) -> Iterator[Batch]:
        try:
            for batch_start, stop in self.ranges:
                self._fill()
                results = [self._pending.popleft().result() for _ in range(stop - batch_start)]
                self._fill()
                good = [r for r in results if r.pixels is not None]
                errors = [r.item for r in results if r.pixels is None]
                pixels = torch.stack([r.pixels for r in good]) if good else None
                if pixels is not None and self.pin_memory:
                    pixels = pixels.pin_memory()
                yield Batch(batch_start, stop, good, errors, pixels)
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the decoding queued ahead and stop the threads."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_batches(
    dataset: Dataset,
    preprocess: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    *,
    start: int = 0,
    workers: int = 2,
    prefetch_batches: int = 2,
) -> Iterator[Batch]:
    """Iterate a :class:`BatchLoader` (decoding starts at the first ``next``)."""
    yield from BatchLoader(
        dataset, preprocess, batch_size, start=start, workers=workers, prefetch_batches=prefetch_batches
    )
