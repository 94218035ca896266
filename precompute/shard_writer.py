"""``conceptscope dataset shard``: write webdataset tar shards from an image folder or list."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from precompute.datasets import DEMO_PREFIX, FileListDataset, open_dataset
from precompute.shards import IMAGE_KEYS, ShardDataset, decode_image
from precompute.sources import DatasetError


def _sample_key(key: str, taken: set[str]) -> str:
    """A webdataset key for an item key: no suffix, no dot in the last path part, unique."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    head, _, tail = stem.rpartition("/")
    stem = (head + "/" if head else "") + tail.replace(".", "_")
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}"
    taken.add(candidate)
    return candidate


def write_shards(source: str, out: Path, size: int, prefix: str = "shard") -> tuple[str, int, int]:
    """Write ``source`` (a folder, .csv/.jsonl list or demo:N) as tar shards of ``size`` samples.

    Image files are copied byte for byte (``jpg``/``png``/``webp``; other formats are re-encoded as
    PNG); captions go to ``txt``; the original key (and demo ground truth) to ``json``. Returns the
    brace spec of the shards written, the number of samples and of shards.
    """
    import webdataset as wds

    if size < 1:
        raise ValueError("--size must be at least 1")
    data = open_dataset(source)
    if isinstance(data, ShardDataset):
        raise ValueError("the source is already a set of shards")
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{prefix}-%06d.tar")
    taken: set[str] = set()
    count = 0
    with wds.ShardWriter(pattern, maxcount=size, verbose=0) as sink:
        for position in range(len(data)):
            key = data.key(position)
            sample: dict[str, Any] = {"__key__": _sample_key(key, taken)}
            caption, meta = None, {}
            suffix = Path(key).suffix.lower().lstrip(".")
            if isinstance(data, FileListDataset):
                caption = data.entries[position][1]
                raw = (data.root / key).read_bytes()
            else:
                item = data.load(position)
                caption, meta = item.caption, item.meta
                raw, suffix = b"", "png"
                if item.image is not None:
                    buffer = io.BytesIO()
                    item.image.save(buffer, format="PNG")
                    raw = buffer.getvalue()
            if suffix == "jpeg":
                suffix = "jpg"
            if suffix not in IMAGE_KEYS:  # gif, bmp: re-encode (corrupt ones are copied as they are)
                try:
                    buffer = io.BytesIO()
                    decode_image(raw).save(buffer, format="PNG")
                    raw, suffix = buffer.getvalue(), "png"
                except Exception:  # noqa: BLE001 - keep the bytes: the pass reports it as corrupt
                    suffix = "png"
            sample[suffix] = raw
            if caption:
                sample["txt"] = caption
            sample["json"] = {"key": key, **meta}  # the source key, and demo ground truth
            sink.write(sample)
            count += 1
    n_shards = len(list(out.glob(f"{prefix}-*.tar")))
    last = n_shards - 1
    spec = str(out / (f"{prefix}-{{000000..{last:06d}}}.tar" if last > 0 else f"{prefix}-000000.tar"))
    return spec, count, n_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``conceptscope dataset shard``."""
    parser.add_argument("source", help=f"image folder, .csv/.jsonl list of paths, or {DEMO_PREFIX}N")
    parser.add_argument("--out", required=True, help="folder for the shards (created)")
    parser.add_argument("--size", type=int, default=10000, help="samples per shard (default: %(default)s)")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        spec, count, n_shards = write_shards(args.source, Path(args.out), args.size, args.prefix)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} samples in {n_shards} shard(s); index them with --dataset '{spec}'")
    return 0
