"""Precompute under ``torchrun``: the process group, work split and exact merges.

``torchrun --nproc-per-node N -m app.cli precompute activations ...`` starts N copies of the
command; :func:`context` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins the process group (``nccl`` when CUDA is available, else ``gloo``).
Without torchrun it is a one-process context and no process group is created.

Work is split by whole units: webdataset shards, or batches for random-access datasets, or
optimisation batches / vocabulary chunks; unit ``i`` goes to rank ``i % world``
(:func:`my_share`). Each rank keeps the same per-unit state as a single process (values come
from the same batches, so they are bitwise the same) and rank 0 merges the ranks' states
exactly: top-k lists by (value descending, position ascending) (:func:`merge_topk`), counts,
means and variances by Chan's parallel formula (:func:`chan_merge`), maxima, and the disjoint
rows of the activation sample. Only rank 0 writes the result.

The labels stage is driven by rank 0, which hands its heavy, per-item work (image embeddings,
word renderings, per-unit label evidence) to every rank with :func:`share_map` while the other
ranks wait in :func:`serve_maps`.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

#: Stages that split their work over torchrun ranks; the others run on rank 0 only.
DISTRIBUTED_STAGES = ("activations", "featurevis", "words", "labels")
TIMEOUT = timedelta(hours=2)  # a rank may wait this long for the others (e.g. while rank 0 writes)


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes results and shows progress."""
        return self.rank == 0


def env_context() -> Context:
    """The context torchrun's environment describes (no process group is joined)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Context()
    return Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def context() -> Context:
    """This process's context; joins the process group the first time under torchrun."""
    env = env_context()
    if not env.distributed:
        return env
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        atexit.register(shutdown)
    return Context(env.rank, env.world, env.local_rank, dist.get_backend())


def shutdown() -> None:
    """Leave the process group (at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(ctx: Context, device: str) -> str:
    """``auto`` → this rank's GPU (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    if device != "auto":
        return device
    from app.config import best_device

    chosen = best_device()
    if chosen.startswith("cuda") and ctx.distributed:
        return f"cuda:{ctx.local_rank}"
    return chosen


def my_share(units: list[T], ctx: Context) -> list[T]:
    """The units of this rank: every ``world``-th from ``rank``."""
    return units[ctx.rank :: ctx.world] if ctx.distributed else list(units)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather(obj: Any, ctx: Context) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); ``None`` on the others."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * ctx.world if ctx.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- exact merges ---------------------------------------------------------------------------


def merge_topk(
    values: list[torch.Tensor], positions: list[torch.Tensor], payloads: list[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-unit top-k lists ``(U, K)`` (with payloads ``(U, K, ...)``) into one ``(U, k)``.

    Order: value descending, ties by dataset position ascending (empty slots, position -1,
    before real ones at -inf, as in a single pass). This is the order a single process builds,
    so the merge of disjoint shares equals the single-process result.
    """
    v = torch.cat(values, 1)
    p = torch.cat(positions, 1)
    x = torch.cat(payloads, 1)
    by_position = torch.sort(p, dim=1, stable=True).indices
    v, p = v.gather(1, by_position), p.gather(1, by_position)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
    index = by_position.gather(1, order)
    flat = x.reshape(*x.shape[:2], -1)
    picked = flat.gather(1, index[..., None].expand(-1, -1, flat.shape[2]))
    return v.gather(1, order), p.gather(1, order), picked.reshape(x.shape[0], k, *x.shape[2:])


def chan_merge(
    n_a: int, mean_a: torch.Tensor, m2_a: torch.Tensor, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and sum of squared deviations of two sets (Chan, Golub and LeVeque)."""
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta.square() * (n_a * n_b / n)
    return n, mean, m2


# --- work shared out by rank 0 (the labels stage) ---------------------------------------------


def share_map(fn: Callable[[Any, Any], R], items: Sequence[Any], shared: Any, ctx: Context) -> list[R]:
    """``[fn(shared, item) for item in items]``, computed by every rank (every ``world``-th item
    each, as :func:`my_share`), in item order on rank 0.

    Only rank 0 calls it; the other ranks wait in :func:`serve_maps`. ``fn`` must be a module-level
    function (it is pickled by name) and ``shared``/``items`` picklable; ``shared`` goes to every
    rank, each item only to the rank that computes it. Each item's result is what ``fn`` computes
    alone, so the merged list equals the single-process one.
    """
    if not ctx.distributed:
        return [fn(shared, item) for item in items]
    import torch.distributed as dist

    items = list(items)
    broadcast((fn, shared), ctx)
    box: list[Any] = [None]
    dist.scatter_object_list(box, [items[r :: ctx.world] for r in range(ctx.world)], src=0)
    parts = gather([fn(shared, item) for item in box[0]], ctx)
    assert parts is not None
    return [parts[i % ctx.world][i // ctx.world] for i in range(len(items))]


def serve_maps(ctx: Context) -> int:
    """On a rank other than 0: compute this rank's share of every :func:`share_map` until rank 0
    calls :func:`stop_maps`. Returns the number of maps served."""
    import torch.distributed as dist

    served = 0
    while True:
        task = broadcast(None, ctx)
        if task is None:
            return served
        fn, shared = task
        box: list[Any] = [None]
        dist.scatter_object_list(box, None, src=0)
        gather([fn(shared, item) for item in box[0]], ctx)
        served += 1


def stop_maps(ctx: Context) -> None:
    """On rank 0: release the ranks waiting in :func:`serve_maps`."""
    if ctx.distributed:
        broadcast(None, ctx)
