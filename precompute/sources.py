"""The dataset interface of precompute: an ordered, indexable list of items (see
:mod:`precompute.datasets` for the sources and :mod:`precompute.shards` for webdataset shards)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


class DatasetError(ValueError):
    """A dataset spec that cannot be opened (missing folder, bad list file, ...)."""


@dataclass
class Item:
    """One dataset item: an RGB image, or an ``error`` saying why it could not be read."""

    position: int
    key: str
    image: Image.Image | None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Dataset:
    """An ordered, indexable image source. Subclasses implement :meth:`load`."""

    spec: str  # canonical spec (stored with every image row)

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, position: int) -> str:
        raise NotImplementedError

    def load(self, position: int) -> Item:
        """The item at ``position``; never raises for a bad image (``Item.error`` is set)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of the spec and every key (detects a dataset that changed between runs)."""
        digest = hashlib.sha256(self.spec.encode())
        for i in range(len(self)):
            digest.update(b"\0" + self.key(i).encode())
        return digest.hexdigest()

    def parts(self) -> list[tuple[int, int]]:
        """Position ranges read as a unit (webdataset shards); one part for random-access data."""
        return [(0, len(self))]

    def batch_ranges(self, batch_size: int, start: int = 0) -> list[tuple[int, int]]:
        """Fixed ``(start, stop)`` batches: consecutive positions, never straddling a part."""
        ranges = []
        for lo, hi in self.parts():
            ranges += [(b, min(b + batch_size, hi)) for b in range(lo, hi, batch_size)]
        return [r for r in ranges if r[0] >= start]

    def iter_raw(self, positions: list[int]) -> Iterator[tuple[int, Any]]:
        """``(position, raw)`` in the order given; :meth:`decode` turns ``raw`` into an item.
        Random-access sources read nothing here (decoding threads load by position);
        streamed sources (shards) read their bytes here, in order."""
        for position in positions:
            yield position, None

    def decode(self, position: int, raw: Any) -> Item:
        """The item at ``position`` from what :meth:`iter_raw` gave (never raises)."""
        return self.load(position)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
