"""``conceptscope precompute activations``: top-k dataset examples and statistics per neuron.

One pass over a dataset (:mod:`precompute.datasets`) with hooks on the model's indexed layers.
For every neuron (layer, unit) it keeps, on the model's device and merged batch by batch with
tensor ops, the top-k images by spatial max with their spatial heatmaps; running sums for the
mean/std/max; and the values of a seeded random sample of images (for histograms).

Resumable and deterministic: batches are fixed position ranges, ties are broken by dataset
position, and the whole pass state is checkpointed in the ``runs`` row every few batches. A
killed run continues from its last checkpoint and ends with the same database as an
uninterrupted run; a finished run is a no-op. Under ``torchrun`` each rank takes every N-th
shard (or batch), checkpoints its share in its own part row, and rank 0 merges the ranks'
states exactly (:mod:`precompute.distributed`) and writes; the result equals a one-process run
(statistics up to float rounding). Only images that end up in some top-k list or in
the sample are stored (row + content-addressed thumbnail of exactly the pixels the model saw).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from app.config import DEFAULT_DATA_DIR, db_url_from_arg
from app.db import make_engine, session_factory, sha256_hex, to_bytes
from app.db.schema import (
    ActivationSample,
    Blob,
    Direction,
    Image,
    Layer,
    Model,
    Neuron,
    Run,
    TopExample,
)
from app.models import LayerInfo, LoadedModel, ModelSpec, load_model
from app.neurons.capture import run_visual, spatial_maps
from app.neurons.directions import unit_directions
from precompute import distributed
from precompute.datasets import (
    Batch,
    BatchLoader,
    Dataset,
    DatasetError,
    open_dataset,
    prepare,
    split_preprocess,
)
from precompute.distributed import Context, chan_merge, context, device_for, gather, merge_topk, my_share
from precompute.distributed import barrier as dist_barrier
from precompute.distributed import broadcast as dist_broadcast
from precompute.runs import checkpoint_run, drop_parts, finish_run, params_hash, start_distributed_run

STAGE = "activations"
DEFAULT_TOP_K = 64
DEFAULT_BATCH_SIZE = 64
DEFAULT_SAMPLE = 1000
SAMPLE_SEED = 0
DEFAULT_WORKERS = min(8, os.cpu_count() or 2)  # decoding threads
CHECKPOINT_BATCHES = 8
CHECKPOINT_SECONDS = 60.0  # checkpoint at least this often ...
CHECKPOINT_MIN_SECONDS = 5.0  # ... and, by batch count, at most this often (state can be ~100 MB
# for RN50x4; a checkpoint also waits 10x the time the previous one took)
THUMB_MAX_SIDE = 320
THUMB_QUALITY = 90
MAX_CHECKPOINT_THUMB_BYTES = 256 * 1024 * 1024
CHECKPOINT_FORMAT = 2  # 2: mean and m2 (Chan) instead of sums; skipped positions
PENDING_THUMBS = 512  # model views held before the still-kept ones are JPEG-encoded (in threads)


@dataclass
class ActivationsReport:
    """What a call to :func:`run_activations` did."""

    model: str
    dataset: str
    status: str  # done | already-done | interrupted
    n_items: int
    n_indexed: int  # images read and run through the model (whole run, not just this call)
    skipped: list[tuple[str, str]]  # (key, error) of unreadable images
    batches_run: int  # batches processed by this call
    elapsed_s: float  # this call
    run_id: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # setup_s, pass_s, finalize_s (this call)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


@dataclass
class LayerState:
    """Streaming per-layer state, kept on the model's device."""

    top_values: torch.Tensor  # (U, K) float32, sorted by (value desc, position asc)
    top_positions: torch.Tensor  # (U, K) int64, -1 = empty slot
    top_maps: torch.Tensor  # (U, K, H, W) float16
    mean: torch.Tensor  # (U,) float64 mean of spatial maxima
    m2: torch.Tensor  # (U,) float64 sum of squared deviations from the mean (Chan et al.)
    maximum: torch.Tensor  # (U,) float32
    sample: torch.Tensor  # (S + 1, U) float32; the last row is a scratch slot

    @classmethod
    def empty(cls, layer: LayerInfo, k: int, n_sample: int, device: torch.device) -> LayerState:
        u, (h, w) = layer.n_units, layer.grid
        return cls(
            top_values=torch.full((u, k), float("-inf"), device=device),
            top_positions=torch.full((u, k), -1, dtype=torch.int64, device=device),
            top_maps=torch.zeros((u, k, h, w), dtype=torch.float16, device=device),
            mean=torch.zeros(u, dtype=torch.float64, device=device),
            m2=torch.zeros(u, dtype=torch.float64, device=device),
            maximum=torch.full((u,), float("-inf"), device=device),
            sample=torch.zeros((n_sample + 1, u), device=device),
        )

    FIELDS = ("top_values", "top_positions", "top_maps", "mean", "m2", "maximum", "sample")

    def merge(
        self, maps: torch.Tensor, positions: torch.Tensor, sample_slots: torch.Tensor, n_before: int
    ) -> None:
        """Fold a batch of spatial maps ``(B, U, H, W)`` at dataset ``positions`` into the state
        (``n_before``: images folded in so far)."""
        b, u, h, w = maps.shape
        k = self.top_values.shape[1]
        values = maps.amax(dim=(2, 3))  # (B, U)
        batch = values.double()
        batch_mean = batch.mean(0)
        batch_m2 = (batch - batch_mean).square().sum(0)
        _, self.mean, self.m2 = chan_merge(n_before, self.mean, self.m2, b, batch_mean, batch_m2)
        self.maximum = torch.maximum(self.maximum, values.amax(0))
        self.sample.index_copy_(0, sample_slots, values)
        # Current top-k first (older positions), then the batch in position order: a stable sort
        # by value keeps ties ordered by dataset position.
        candidates = torch.cat([self.top_values, torch.nan_to_num(values.T, nan=float("-inf"))], 1)
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :k]
        self.top_values = candidates.gather(1, order)
        self.top_positions = torch.cat([self.top_positions, positions.expand(u, b)], 1).gather(1, order)
        batch_maps = maps.transpose(0, 1).reshape(u, b, h * w).clamp(-65504, 65504).half()
        all_maps = torch.cat([self.top_maps.reshape(u, k, h * w), batch_maps], 1)
        self.top_maps = all_maps.gather(1, order[..., None].expand(u, k, h * w)).reshape(u, k, h, w)


@dataclass
class IndexedImage:
    """A stored image's row data and thumbnail (JPEG of the model's view)."""

    key: str
    caption: str | None
    meta: dict[str, Any]
    width: int
    height: int
    jpeg: bytes
    thumb_size: tuple[int, int]


@dataclass
class Pending:
    """A kept image's model view, JPEG-encoded later only if it is still kept then."""

    position: int
    key: str
    caption: str | None
    meta: dict[str, Any]
    width: int
    height: int
    view: PILImage.Image

    def encode(self) -> IndexedImage:
        return make_thumb(self.key, self.caption, self.meta, (self.width, self.height), self.view)


@dataclass
class PassState:
    """Everything needed to continue a pass: checkpointed into ``runs.state``."""

    layers: dict[str, LayerState]
    sample_positions: torch.Tensor  # (S,) int64 sorted, on device
    sample_seen: torch.Tensor  # (S + 1,) bool, on device
    position: int = 0  # next dataset position to process (a batch boundary)
    batch_size: int = DEFAULT_BATCH_SIZE
    n_indexed: int = 0
    batches_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_positions: list[int] = field(default_factory=list)  # dataset position of each skipped
    thumbs: dict[int, IndexedImage] = field(default_factory=dict)
    pending: dict[int, Pending] = field(default_factory=dict)  # not yet encoded; never checkpointed

    def flush_thumbs(self) -> None:
        """Drop thumbnails of images no longer kept; JPEG-encode the pending ones still kept."""
        kept = self.kept_positions()
        self.thumbs = {p: t for p, t in self.thumbs.items() if p in kept}
        todo = [pending for p, pending in sorted(self.pending.items()) if p in kept]
        self.pending = {}
        if todo:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="thumbs") as pool:
                for position, thumb in zip(
                    (t.position for t in todo), pool.map(Pending.encode, todo), strict=True
                ):
                    self.thumbs[position] = thumb

    def slots(self, positions: torch.Tensor) -> torch.Tensor:
        """Sample row of each position; rows of positions outside the sample → scratch row."""
        n_sample = self.sample_positions.numel()
        if n_sample == 0:
            return torch.zeros_like(positions)
        idx = torch.searchsorted(self.sample_positions, positions).clamp(max=n_sample - 1)
        hit = self.sample_positions[idx] == positions
        return torch.where(hit, idx, torch.full_like(idx, n_sample))

    def kept_positions(self) -> set[int]:
        """Positions currently in some top-k list or in the sample (those need thumbnails)."""
        kept: set[int] = set()
        for state in self.layers.values():
            kept.update(np.unique(state.top_positions.cpu().numpy()).tolist())
        seen = self.sample_seen[:-1]
        kept.update(self.sample_positions[seen].tolist())
        kept.discard(-1)
        return kept

    # -- serialisation (safetensors: tensors + JSON metadata; no pickle) --------------------

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {
            "sample_positions": self.sample_positions.cpu(),
            "sample_seen": self.sample_seen.cpu(),
        }
        for name, state in self.layers.items():
            for f in LayerState.FIELDS:
                tensors[f"{name}/{f}"] = getattr(state, f).contiguous().cpu()
        keep = sorted(self.kept_positions() & set(self.thumbs))
        thumbs_meta: list[dict[str, Any]] = []
        chunks, offset = [], 0
        if sum(len(self.thumbs[p].jpeg) for p in keep) <= MAX_CHECKPOINT_THUMB_BYTES:
            for p in keep:
                t = self.thumbs[p]
                thumbs_meta.append(
                    {
                        "position": p,
                        "key": t.key,
                        "caption": t.caption,
                        "meta": t.meta,
                        "width": t.width,
                        "height": t.height,
                        "thumb_size": list(t.thumb_size),
                        "offset": offset,
                        "length": len(t.jpeg),
                    }
                )
                chunks.append(t.jpeg)
                offset += len(t.jpeg)
        tensors["thumb_bytes"] = torch.frombuffer(bytearray(b"".join(chunks) or b"\0"), dtype=torch.uint8)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "position": self.position,
            "batch_size": self.batch_size,
            "n_indexed": self.n_indexed,
            "batches_done": self.batches_done,
            "skipped": self.skipped,
            "skipped_positions": self.skipped_positions,
            "thumbs": thumbs_meta,
        }
        return save(tensors, metadata={"state": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes, layer_names: list[str], device: torch.device) -> PassState:
        from safetensors.torch import load

        tensors = load(data)
        meta = json.loads(_safetensors_metadata(data)["state"])
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        layers = {
            name: LayerState(**{f: tensors[f"{name}/{f}"].to(device) for f in LayerState.FIELDS})
            for name in layer_names
        }
        blob = tensors["thumb_bytes"].numpy().tobytes()
        thumbs = {
            t["position"]: IndexedImage(
                t["key"],
                t["caption"],
                t["meta"],
                t["width"],
                t["height"],
                blob[t["offset"] : t["offset"] + t["length"]],
                tuple(t["thumb_size"]),
            )
            for t in meta["thumbs"]
        }
        return cls(
            layers=layers,
            sample_positions=tensors["sample_positions"].to(device),
            sample_seen=tensors["sample_seen"].to(device),
            position=meta["position"],
            batch_size=meta["batch_size"],
            n_indexed=meta["n_indexed"],
            batches_done=meta["batches_done"],
            skipped=[tuple(s) for s in meta["skipped"]],
            skipped_positions=list(meta["skipped_positions"]),
            thumbs=thumbs,
        )


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a serialized safetensors buffer (header: u64 length + JSON)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def make_thumb(
    item_key: str, caption: str | None, meta: dict[str, Any], original: tuple[int, int], view: PILImage.Image
) -> IndexedImage:
    """JPEG thumbnail of the model's view of an image (what heatmaps are aligned to)."""
    if max(view.size) > THUMB_MAX_SIDE:
        view = view.copy()
        view.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE), PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    view.convert("RGB").save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return IndexedImage(item_key, caption, meta, original[0], original[1], buffer.getvalue(), view.size)


def weights_fingerprint(loaded: LoadedModel) -> str:
    """SHA-256 over the vision tower's parameters (detects new weights under the same slug)."""
    digest = hashlib.sha256()
    for name, tensor in loaded.visual.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_params(loaded: LoadedModel, dataset: Dataset, top_k: int, sample_size: int) -> dict[str, Any]:
    """The inputs that determine the result (batch size and device are performance knobs)."""
    return {
        "model": loaded.spec.slug,
        "weights": weights_fingerprint(loaded),
        "dataset": dataset.spec,
        "dataset_fingerprint": dataset.fingerprint(),
        "n_items": len(dataset),
        "layers": [layer.name for layer in loaded.layers],
        "top_k": top_k,
        "sample_size": sample_size,
        "sample_seed": SAMPLE_SEED,
    }


def upsert_model(session: Session, loaded: LoadedModel) -> Model:
    """The ``models`` row of ``loaded`` (created or refreshed)."""
    import open_clip

    spec = loaded.spec
    model = session.scalar(select(Model).where(Model.slug == spec.slug))
    if model is None:
        model = Model(slug=spec.slug)
        session.add(model)
    model.name = spec.name
    model.pretrained = spec.pretrained
    model.embed_dim = loaded.embed_dim
    model.image_size = loaded.image_size
    model.config = {"open_clip": open_clip.get_model_config(spec.name) or {}}
    session.flush()
    return model


def run_activations(
    spec: ModelSpec | LoadedModel,
    dataset: str | Dataset,
    db_url: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    sample_size: int = DEFAULT_SAMPLE,
    device: str = "cpu",
    workers: int = DEFAULT_WORKERS,
    checkpoint_batches: int = CHECKPOINT_BATCHES,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    checkpoint_min_seconds: float = CHECKPOINT_MIN_SECONDS,
    stop_after_batches: int | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> ActivationsReport:
    """Index ``dataset`` with ``spec`` into the database at ``db_url`` (resuming if possible).

    The pass state is checkpointed every ``checkpoint_batches`` batches (but not more often than
    every ``checkpoint_min_seconds`` or 10x the time the last checkpoint took; 0 turns that
    throttle off) and at least every ``checkpoint_seconds``; where the checkpoints fall never
    changes the result. ``stop_after_batches`` ends the call after that
    many batches (and any checkpoint due then) without finalizing, exactly like a run killed
    there (tests use it to exercise resumption; not under torchrun). ``precision``: ``auto``
    (bf16 autocast on a GPU, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16`` (autocast); on a GPU
    batches are also pinned and copied asynchronously.
    """
    started = time.perf_counter()
    if top_k < 1 or batch_size < 1 or sample_size < 0:
        raise ValueError("top_k and batch_size must be >= 1 and sample_size >= 0")
    ctx = context()
    if ctx.distributed and stop_after_batches is not None:
        raise ValueError("stop_after_batches is not supported under torchrun (kill the job instead)")
    device = device_for(ctx, device)
    loaded = spec if isinstance(spec, LoadedModel) else load_model(spec, device)
    data = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    if precision == "auto":
        precision = "bf16" if loaded.device.type == "cuda" else "fp32"
    if precision not in AUTOCAST:
        raise ValueError(f"precision must be auto, {', '.join(AUTOCAST)} (got {precision!r})")
    options = PassOptions(
        top_k, batch_size, sample_size, workers, checkpoint_batches, checkpoint_seconds,
        checkpoint_min_seconds, stop_after_batches, progress and ctx.is_writer, precision,
    )  # fmt: skip
    # Start decoding the first batches now (a fresh run starts at 0): it overlaps the set-up below.
    mine = share(data, batch_size, ctx)
    pin = loaded.device.type == "cuda"
    if len(data.parts()) > 1:  # streamed shards: read nothing before the checkpoint says where
        mine = []
    first = BatchLoader(data, loaded.preprocess, batch_size, ranges=mine, workers=workers, pin_memory=pin)
    try:
        return _index(loaded, data, db_url, options, first, started, ctx)
    finally:
        first.close()


def share(data: Dataset, batch_size: int, ctx: Context, start: int = 0) -> list[tuple[int, int]]:
    """This rank's batches from ``start``: whole shards (several parts) or every N-th batch."""
    parts = data.parts()
    ranges = data.batch_ranges(batch_size)
    if len(parts) > 1:
        units = [[r for r in ranges if lo <= r[0] < hi] for lo, hi in parts]
    else:
        units = [[r] for r in ranges]
    return [r for unit in my_share(units, ctx) for r in unit if r[0] >= start]


@dataclass(frozen=True)
class PassOptions:
    """The knobs of :func:`run_activations` (see there)."""

    top_k: int
    batch_size: int
    sample_size: int
    workers: int
    checkpoint_batches: int
    checkpoint_seconds: float
    checkpoint_min_seconds: float
    stop_after_batches: int | None
    progress: bool
    precision: str = "fp32"


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _start(sessions: Any, loaded: LoadedModel, params: dict[str, Any], n_items: int, ctx: Context) -> tuple:
    """Find or start the stage's run (rank 0, with the model's row) and this rank's checkpoint row.

    Returns ``(model_id, run_id, status, checkpoint_row_id, saved_state)``.
    """
    slug = loaded.spec.slug
    started = start_distributed_run(
        sessions, ctx, lambda session: session.scalar(select(Model.id).where(Model.slug == slug)),
        STAGE, params, {"position": 0, "n_items": n_items}, part_progress={"position": 0},
        prepare=lambda session: upsert_model(session, loaded),
    )  # fmt: skip
    return started.model_id, started.run_id, started.status, started.part_id, started.state


def _index(
    loaded: LoadedModel,
    data: Dataset,
    db_url: str,
    options: PassOptions,
    first: BatchLoader,
    started: float,
    ctx: Context,
) -> ActivationsReport:
    """Set up (or find) the run, resume or start the pass, finalize; see :func:`run_activations`."""
    top_k, batch_size, sample_size = options.top_k, options.batch_size, options.sample_size
    progress = options.progress
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    params = run_params(loaded, data, top_k, sample_size)
    if options.precision != "fp32":  # reduced precision changes the values: another run
        params["precision"] = options.precision
    layer_names = [layer.name for layer in loaded.layers]
    model_id, run_id, status, part_id, saved = _start(sessions, loaded, params, len(data), ctx)

    def report(status: str, state: PassState | None, batches: int) -> ActivationsReport:
        if state is None:
            with sessions() as session:
                progress_info = session.get(Run, run_id).progress or {}
            n_indexed = int(progress_info.get("n_indexed", 0))
            skipped = [tuple(s) for s in progress_info.get("skipped", [])]
        else:
            n_indexed, skipped = state.n_indexed, list(state.skipped)
        return ActivationsReport(
            loaded.spec.slug,
            data.spec,
            status,
            len(data),
            n_indexed,
            skipped,
            batches,
            time.perf_counter() - started,
            run_id,
            dict(timings),
        )

    timings: dict[str, float] = {}
    if status == "done":
        engine.dispose()
        return report("already-done", None, 0)

    dev = loaded.device
    state = None
    if saved:
        try:
            state = PassState.from_bytes(saved, layer_names, dev)
        except Exception as exc:  # noqa: BLE001 - e.g. written by another version: start over
            print(f"cannot resume from the saved checkpoint ({exc!r}); starting over", file=sys.stderr)
    if state is None:
        n_sample = min(sample_size, len(data))
        chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(data)), n_sample))
        state = PassState(
            layers={layer.name: LayerState.empty(layer, top_k, n_sample, dev) for layer in loaded.layers},
            sample_positions=torch.tensor(chosen, dtype=torch.int64, device=dev),
            sample_seen=torch.zeros(n_sample + 1, dtype=torch.bool, device=dev),
            batch_size=batch_size,
        )
    if state.batch_size != batch_size and progress:
        print(
            f"resuming with the checkpoint's batch size {state.batch_size} (asked: {batch_size})",
            file=sys.stderr,
        )

    loader = first
    if not first.ranges or (state.position, state.batch_size) != (0, first.batch_size):  # elsewhere
        first.close()
        ranges = share(data, state.batch_size, ctx, start=state.position)
        loader = BatchLoader(
            data, loaded.preprocess, state.batch_size, ranges=ranges, workers=options.workers,
            pin_memory=first.pin_memory,
        )  # fmt: skip
    mine = sum(hi - lo for lo, hi in share(data, state.batch_size, ctx))
    batches = 0
    timings = {"setup_s": time.perf_counter() - started}
    last_checkpoint, checkpoint_cost = time.monotonic(), 0.0
    bar = tqdm(
        total=mine,
        initial=mine - loader.n_items,
        unit="img",
        desc=f"activations {loaded.spec.slug}" + (f" (rank 0 of {ctx.world})" if ctx.distributed else ""),
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        with fast_layout(loaded), loader:
            remaining = len(loader.ranges)
            for batch in loader:
                process_batch(loaded, state, batch, AUTOCAST[options.precision])
                batches += 1
                remaining -= 1
                bar.update(batch.stop - batch.start)
                bar.set_postfix(skipped=len(state.skipped), refresh=False)
                since = time.monotonic() - last_checkpoint
                due = state.batches_done % options.checkpoint_batches == 0
                # by batch count, but spending at most ~10% of the time on checkpoints
                throttle = max(options.checkpoint_min_seconds, 10 * checkpoint_cost)
                due = due and (options.checkpoint_min_seconds <= 0 or since >= throttle)
                late = since > options.checkpoint_seconds
                if remaining and (due or late):
                    begun = time.monotonic()
                    save_checkpoint(sessions, part_id, state, len(data))
                    last_checkpoint = time.monotonic()
                    checkpoint_cost = last_checkpoint - begun
                if options.stop_after_batches is not None and batches >= options.stop_after_batches:
                    engine.dispose()
                    return report("interrupted", state, batches)
    finally:
        bar.close()

    if ctx.distributed:
        # this rank's share is complete: keep it (a rank killed while another still runs resumes
        # here), then merge every rank's state on rank 0
        save_checkpoint(sessions, part_id, state, len(data))
        merged = merge_states(state, ctx, top_k)
    else:
        merged = state
    timings["pass_s"] = time.perf_counter() - started - timings["setup_s"]
    if merged is not None:
        merged.position = len(data)
        finalize(sessions, run_id, loaded, data, merged)
        if ctx.distributed:
            with sessions.begin() as session:
                drop_parts(session, model_id, STAGE, params_hash(params))
    dist_barrier(ctx)
    engine.dispose()
    timings["finalize_s"] = time.perf_counter() - started - timings["setup_s"] - timings["pass_s"]
    return report("done", merged or state, batches)


def merge_states(state: PassState, ctx: Context, top_k: int) -> PassState | None:
    """Every rank's pass state merged exactly on rank 0 (``None`` on the other ranks).

    Top-k by (value desc, position asc), count/mean/m2 by Chan's formula in rank order, maxima,
    the sample's rows from the rank that saw them, skipped items in position order, and the
    thumbnails of the images kept in the end.
    """
    state.flush_thumbs()
    header = gather(
        {
            "n": state.n_indexed,
            "batches": state.batches_done,
            "skipped": list(zip(state.skipped_positions, state.skipped, strict=True)),
            "seen": state.sample_seen.cpu(),
        },
        ctx,
    )
    merged: dict[str, LayerState] = {}
    for name, layer_state in state.layers.items():
        parts = gather({f: getattr(layer_state, f).cpu() for f in LayerState.FIELDS}, ctx)
        if parts is None:
            continue
        values, positions, maps = merge_topk(
            [p["top_values"] for p in parts],
            [p["top_positions"] for p in parts],
            [p["top_maps"] for p in parts],
            top_k,
        )
        n, mean, m2 = 0, parts[0]["mean"], parts[0]["m2"]
        for h, part in zip(header, parts, strict=True):
            n, mean, m2 = chan_merge(n, mean, m2, h["n"], part["mean"], part["m2"])
        sample = parts[0]["sample"].clone()
        for h, part in zip(header, parts, strict=True):
            sample[h["seen"]] = part["sample"][h["seen"]]
        maximum = torch.stack([p["maximum"] for p in parts]).amax(0)
        merged[name] = LayerState(values, positions, maps, mean, m2, maximum, sample)
        del parts
    result = None
    if header is not None:
        skipped = sorted((pair for h in header for pair in h["skipped"]), key=lambda pair: pair[0])
        seen = torch.stack([h["seen"] for h in header]).any(0)
        result = PassState(
            layers=merged,
            sample_positions=state.sample_positions.cpu(),
            sample_seen=seen,
            position=state.position,
            batch_size=state.batch_size,
            n_indexed=sum(h["n"] for h in header),
            batches_done=sum(h["batches"] for h in header),
            skipped=[tuple(s) for _, s in skipped],
            skipped_positions=[p for p, _ in skipped],
        )
    kept = dist_broadcast(result.kept_positions() if result is not None else None, ctx)
    thumbs = gather({p: t for p, t in state.thumbs.items() if p in kept}, ctx)
    if result is not None:
        for part in thumbs:
            result.thumbs.update(part)
    return result


@contextmanager
def fast_layout(loaded: LoadedModel) -> Iterator[None]:
    """Run a ModifiedResNet in channels-last memory layout on the CPU during the pass.

    oneDNN convolutions are much faster in that layout (about 1.5x for the demo model on a
    2-core CPU) and give the same values; the model's own layout is restored afterwards.
    """
    convs = [m for m in loaded.visual.modules() if isinstance(m, torch.nn.Conv2d)]
    wanted = (
        loaded.device.type == "cpu"
        and bool(convs)
        and any(layer.kind == "resnet_block" for layer in loaded.layers)
        and not convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    )
    if not wanted:
        yield
        return
    loaded.visual.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        loaded.visual.to(memory_format=torch.contiguous_format)


def process_batch(
    loaded: LoadedModel, state: PassState, batch: Batch, autocast: torch.dtype | None = None
) -> None:
    """Run one batch through the model and merge it into ``state`` (all on the device); with
    ``autocast`` the model runs in that reduced precision (the state stays float32)."""
    for item in batch.errors:
        state.skipped.append((item.key, item.error or "unreadable"))
        state.skipped_positions.append(item.position)
    if batch.pixels is not None:
        dev = loaded.device
        positions = torch.tensor(batch.positions, dtype=torch.int64, device=dev)
        slots = state.slots(positions)
        pixels = batch.pixels.to(dev, non_blocking=True)  # asynchronous from pinned memory
        with torch.inference_mode():
            with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
                raw = run_visual(loaded.visual, pixels, loaded.layers)
            for layer in loaded.layers:
                maps = spatial_maps(raw[layer.name], layer).float()
                state.layers[layer.name].merge(maps, positions, slots, state.n_indexed)
            state.sample_seen[slots] = True
            kept = slots < state.sample_positions.numel()
            for layer_state in state.layers.values():
                kept |= torch.isin(positions, layer_state.top_positions)
        for prepared, keep in zip(batch.prepared, kept.tolist(), strict=True):
            if keep:
                item = prepared.item
                state.pending[item.position] = Pending(
                    item.position, item.key, item.caption, item.meta, *item.image.size, prepared.view
                )
        if len(state.pending) >= PENDING_THUMBS:
            state.flush_thumbs()
        state.n_indexed += len(batch.prepared)
    state.position = batch.stop
    state.batches_done += 1


def save_checkpoint(sessions: Any, run_id: int, state: PassState, n_items: int) -> None:
    """Persist the pass state (and prune thumbnails no longer needed)."""
    state.flush_thumbs()
    data = state.to_bytes()
    progress = {
        "position": state.position,
        "n_items": n_items,
        "n_indexed": state.n_indexed,
        "n_skipped": len(state.skipped),
    }
    with sessions.begin() as session:
        checkpoint_run(session, run_id, data, progress)


def finalize(sessions: Any, run_id: int, loaded: LoadedModel, data: Dataset, state: PassState) -> None:
    """Write layers, neurons, images, thumbnails, top examples, samples and directions; mark done."""
    state.flush_thumbs()
    kept = sorted(state.kept_positions())
    view, _ = split_preprocess(loaded.preprocess)
    thumbs = {p: state.thumbs[p] for p in kept if p in state.thumbs}
    missing = [p for p in kept if p not in state.thumbs]

    def reread(position: int) -> IndexedImage:
        prepared = prepare(data, position, view, lambda img: img)
        item = prepared.item
        if prepared.view is None:
            raise DatasetError(f"{item.key} was readable during the pass but not now: {item.error}")
        return make_thumb(item.key, item.caption, item.meta, item.image.size, prepared.view)

    if missing:  # e.g. resumed from a checkpoint too large to hold thumbnails
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="reread") as pool:
            thumbs.update(zip(missing, pool.map(reread, missing), strict=True))
    thumbs = dict(sorted(thumbs.items()))

    with sessions.begin() as session:
        run = session.get(Run, run_id)
        model = session.get(Model, run.model_id)
        image_ids = store_images(session, data.spec, thumbs)
        for position_index, layer in enumerate(loaded.layers):
            row = store_layer(session, model, layer, position_index)
            layer_state = state.layers[layer.name]
            store_neurons(session, row, layer, layer_state, state.n_indexed, image_ids)
            seen = state.sample_seen[:-1].cpu()
            sample_positions = state.sample_positions.cpu()[seen].tolist()
            values = layer_state.sample[:-1].cpu()[seen].numpy()
            session.execute(delete(ActivationSample).where(ActivationSample.layer_id == row.id))
            session.add(
                ActivationSample(
                    layer_id=row.id,
                    image_ids=[image_ids[p] for p in sample_positions],
                    n_images=len(sample_positions),
                    n_units=layer.n_units,
                    values=to_bytes(values, "float16"),
                )
            )
            if layer.is_last:
                directions = unit_directions(loaded.visual, layer).numpy()
                session.execute(delete(Direction).where(Direction.layer_id == row.id))
                session.add(
                    Direction(
                        layer_id=row.id,
                        n_units=directions.shape[0],
                        embed_dim=directions.shape[1],
                        values=to_bytes(directions, "float32"),
                    )
                )
        finish_run(session, run, {
            "position": state.position,
            "n_items": len(data),
            "n_indexed": state.n_indexed,
            "n_skipped": len(state.skipped),
            "skipped": [list(s) for s in state.skipped],
            "n_images_stored": len(image_ids),
        })  # fmt: skip


def store_images(session: Session, dataset: str, thumbs: dict[int, IndexedImage]) -> dict[int, int]:
    """Upsert image rows + thumbnail blobs in position order; return position → image id."""
    order = sorted(thumbs)
    digests = {p: sha256_hex(thumbs[p].jpeg) for p in order}
    known: set[str] = set()
    unique = sorted(set(digests.values()))
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        known.update(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(chunk))))
    new_blobs: dict[str, tuple] = {}
    for p in order:
        t, digest = thumbs[p], digests[p]
        if digest not in known and digest not in new_blobs:
            new_blobs[digest] = (digest, "image/jpeg", t.jpeg, t.thumb_size[0], t.thumb_size[1])
    insert_many(
        session, Blob.__table__, ("sha256", "mime", "data", "width", "height"), list(new_blobs.values())
    )

    existing = {img.key: img for img in session.scalars(select(Image).where(Image.dataset == dataset))}
    new_rows = []
    for p in order:
        t = thumbs[p]
        img = existing.get(t.key)
        if img is None:
            new_rows.append((dataset, t.key, p, t.caption, json.dumps(t.meta), digests[p], t.width, t.height))
        else:  # indexed before (another model or run): refresh in place
            img.position, img.caption, img.meta = p, t.caption, t.meta
            img.thumb_sha256, img.width, img.height = digests[p], t.width, t.height
    session.flush()
    columns = ("dataset", "key", "position", "caption", "meta", "thumb_sha256", "width", "height")
    insert_many(session, Image.__table__, columns, new_rows)
    by_key = dict(session.execute(select(Image.key, Image.id).where(Image.dataset == dataset)).all())
    return {p: by_key[thumbs[p].key] for p in order}


def store_layer(session: Session, model: Model, layer: LayerInfo, position: int) -> Layer:
    row = session.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == layer.name))
    if row is None:
        row = Layer(model_id=model.id, name=layer.name)
        session.add(row)
    row.hook, row.kind, row.position, row.n_units = layer.hook, layer.kind, position, layer.n_units
    row.grid_h, row.grid_w = layer.grid
    row.is_last = layer.is_last
    session.flush()
    return row


def store_neurons(
    session: Session, row: Layer, layer: LayerInfo, state: LayerState, n: int, image_ids: dict[int, int]
) -> None:
    """Neuron stats and top examples of one layer (replacing earlier ones)."""
    mean = state.mean.cpu().numpy()
    std = np.sqrt(np.maximum(state.m2.cpu().numpy() / max(n, 1), 0.0))
    maximum = state.maximum.cpu().numpy()
    stats = [
        (float(mean[u]), float(std[u]), float(maximum[u])) if n else (0.0, 0.0, 0.0)
        for u in range(layer.n_units)
    ]
    existing = {nr.unit: nr for nr in session.scalars(select(Neuron).where(Neuron.layer_id == row.id))}
    for unit, neuron in existing.items():  # re-indexed: update in place (keeps ids and labels)
        if unit < layer.n_units:
            neuron.mean, neuron.std, neuron.max = stats[unit]
    session.flush()
    fresh = [(row.id, u, *stats[u]) for u in range(layer.n_units) if u not in existing]
    insert_many(session, Neuron.__table__, ("layer_id", "unit", "mean", "std", "max"), fresh)
    neuron_ids = dict(session.execute(select(Neuron.unit, Neuron.id).where(Neuron.layer_id == row.id)).all())
    session.execute(delete(TopExample).where(TopExample.neuron_id.in_(list(neuron_ids.values()))))
    values = state.top_values.cpu().numpy()
    positions = state.top_positions.cpu().numpy()
    maps = state.top_maps.cpu().numpy().astype("<f2")
    units, ranks = np.nonzero(positions >= 0)  # unit-major, rank-minor; empty slots (-1) left out
    unit_ids = np.array([neuron_ids[u] for u in range(layer.n_units)], dtype=np.int64)
    stored = np.array(sorted(image_ids), dtype=np.int64)
    stored_ids = np.array([image_ids[p] for p in stored.tolist()], dtype=np.int64)
    images = stored_ids[np.searchsorted(stored, positions[units, ranks])]
    heatmaps = maps.reshape(*values.shape, -1)[units, ranks]
    rows = list(
        zip(
            unit_ids[units].tolist(),
            ranks.tolist(),
            images.tolist(),
            values[units, ranks].tolist(),
            [heatmap.tobytes() for heatmap in heatmaps],
            strict=True,
        )
    )
    insert_many(session, TopExample.__table__, ("neuron_id", "rank", "image_id", "value", "heatmap"), rows)


def insert_many(session: Session, table: Any, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert many rows with the driver's ``executemany`` (SQLAlchemy's per-row parameter
    processing dominates otherwise); falls back to a Core insert for unusual paramstyles."""
    if not rows:
        return
    connection = session.connection()
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(connection.dialect.paramstyle)
    if marker is None:
        connection.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    names = ", ".join(connection.dialect.identifier_preparer.quote(c) for c in columns)
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join([marker] * len(columns))})"
    connection.exec_driver_sql(sql, rows)


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``conceptscope precompute activations`` (every one has a default)."""
    add = parser.add_argument
    dflt = " (default: %(default)s)"
    add("--model", default="demo", help="demo, or an open_clip name such as RN50x4 or ViT-B-32" + dflt)
    add("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai) or a local checkpoint")
    add("--dataset", default="demo:2000", help="image folder, .csv/.jsonl list of paths, or demo:N" + dflt)
    add("--db", default=str(DEFAULT_DATA_DIR / "demo.db"), help="database file or SQLAlchemy URL" + dflt)
    add("--top-k", type=int, default=DEFAULT_TOP_K, help="top examples kept per neuron" + dflt)
    add("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass" + dflt)
    add("--sample", type=int, default=DEFAULT_SAMPLE, help="images in the histogram sample" + dflt)
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1, ..." + dflt)
    add("--workers", type=int, default=DEFAULT_WORKERS, help="decoding threads" + dflt)
    add("--precision", default="auto", choices=["auto", *AUTOCAST],
        help="auto: bf16 autocast on a GPU, fp32 on the CPU" + dflt)  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    spec = ModelSpec.parse(args.model, args.pretrained)
    try:
        result = run_activations(
            spec,
            args.dataset,
            db_url_from_arg(args.db),
            top_k=args.top_k,
            batch_size=args.batch_size,
            sample_size=args.sample,
            device=args.device,
            workers=args.workers,
            progress=not args.no_progress,
            precision=args.precision,
        )
    except (DatasetError, ValueError) as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 2
    if not distributed.env_context().is_writer:  # rank 0 reports for the whole job
        return 0
    if result.status == "already-done":
        print(f"{result.model} on {result.dataset}: already indexed (nothing to do)")
    else:
        print(
            f"{result.model} on {result.dataset}: indexed {result.n_indexed} of {result.n_items} images "
            f"in {result.elapsed_s:.1f}s"
        )
    if result.skipped:
        print(f"skipped {result.n_skipped} unreadable image(s):")
        for key, error in result.skipped[:50]:
            print(f"  {key}: {error}")
        if result.n_skipped > 50:
            print(f"  ... and {result.n_skipped - 50} more (see the runs table)")
    if result.n_indexed == 0:
        print("conceptscope: error: no image of the dataset could be read", file=sys.stderr)
        return 1
    from precompute.summaries import run_summaries  # page summaries (issue 15), rank 0 only

    run_summaries(db_url_from_arg(args.db), result.model)
    return 0
