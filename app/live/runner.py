"""The live model runner: one model in memory, a bounded queue, micro-batching, one model thread.

Requests (``analyze`` an image, ``encode_texts``, or ``submit`` any function of the model) are
queued from the event loop; a batcher task groups compatible jobs (up to ``max_batch``, waiting
up to ``max_wait_ms`` for more while the server is under load) and runs each group on a single
dedicated model thread, so the event loop never blocks on model work and the model is never used
by two threads at once. A full queue raises :class:`Busy` (the web layer answers 503 with
``Retry-After``); a request that waits longer than its timeout raises :class:`LiveTimeout`.

Long calls yield to live requests: a function run by :meth:`LiveRunner.submit` that works in
steps (an on-demand feature visualization) calls :meth:`LiveRunner.serve_waiting` between its
steps, which runs the image and text requests queued meanwhile right there on the model thread
and hands their results back to the event loop; so a render holds ``/analyze`` up by at most one
of its steps, not by its whole run.

Usage::

    runner = LiveRunner.from_settings(settings)   # reads the model of the served DB
    await runner.start()                          # loads, warms up, starts the batcher
    acts = await runner.analyze(pil_image)        # -> ImageActivations
    acts = await runner.analyze(tensor, select=chooser)  # heatmaps of the units chooser(layer, values) picks
    emb = await runner.encode_texts(["a red circle"])
    img = await runner.submit(render_fn, unit, steps=64)  # render_fn(loaded, unit, steps=64)
    await runner.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from app.models import LoadedModel, ModelLoadError, ModelSpec, load_model
from app.neurons import activations, zeroshot

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from app.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE, TEXT, CALL = "image", "text", "call"


class LiveError(RuntimeError):
    """Base class of the runner's errors (each carries a message fit for an HTTP answer)."""


class Busy(LiveError):
    """The queue is full; retry after ``retry_after`` seconds (HTTP 503 + ``Retry-After``)."""

    def __init__(self, retry_after: int, queued: int) -> None:
        super().__init__(f"The live model is busy ({queued} requests queued); retry in {retry_after} s.")
        self.retry_after = retry_after
        self.queued = queued


class LiveTimeout(LiveError):
    """A request waited or ran longer than its timeout (HTTP 503 or 504)."""


class NotRunning(LiveError):
    """The runner is not started, is stopping, or failed to load its model (HTTP 503)."""


@dataclass(eq=False)
class _Job:
    kind: str
    future: asyncio.Future[Any]
    payload: Any  # image tensor (3, S, S) | list[str] | (fn, args, kwargs)
    top_k: int = activations.DEFAULT_TOP_K
    select: activations.Selector | None = None  # image jobs: which units keep heatmaps


@dataclass
class RunnerStats:
    """Counters for /-/health style pages and the benchmark."""

    batches: int = 0
    jobs: int = 0
    largest_batch: int = 0
    rejected: int = 0
    timeouts: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "jobs": self.jobs,
            "largest_batch": self.largest_batch,
            "rejected": self.rejected,
            "timeouts": self.timeouts,
            "mean_batch": round(self.jobs / self.batches, 3) if self.batches else 0.0,
        }


def model_spec_from_db(db_url: str, slug: str | None = None) -> tuple[ModelSpec, str]:
    """The :class:`ModelSpec` and slug of the served DB's model (``slug``, else the first one)."""
    from sqlalchemy import select

    from app.db import make_engine
    from app.db.schema import Model

    engine = make_engine(db_url, create=False)
    try:
        with engine.connect() as conn:
            query = select(Model.name, Model.pretrained, Model.slug).order_by(Model.id)
            if slug is not None:
                query = query.where(Model.slug == slug)
            row = conn.execute(query).first()
    finally:
        engine.dispose()
    if row is None:
        what = f"model {slug!r}" if slug else "any model"
        raise ModelLoadError(f"the database {db_url} has no {what}; run `conceptscope precompute` first")
    return ModelSpec(row.name, row.pretrained), row.slug


def build_runner(settings: Settings) -> LiveRunner | None:
    """The runner ``conceptscope serve`` starts with the app (``None``: the DB has no model)."""
    try:
        return LiveRunner.from_settings(settings)
    except Exception as exc:  # no models row, no such table, unreadable DB: browse-only
        log.warning("no live model: %s", exc)
        return None


def _guarded(
    select: activations.Selector, job: int, failed: dict[int, BaseException]
) -> activations.Selector:
    """``select`` for job ``job`` of a batch: its error (or a unit out of range) is recorded in
    ``failed`` and it picks nothing, so only that job fails, not the batch."""

    def choose(layer: str, values: np.ndarray) -> list[int]:
        if job in failed:
            return []
        try:
            units = [int(u) for u in select(layer, values)]
            bad = [u for u in units if not 0 <= u < len(values)]
            if bad:
                raise ValueError(f"selected unit {bad[0]} is not in layer {layer!r} ({len(values)} units)")
            return units
        except Exception as exc:
            failed[job] = exc
            return []

    return choose


class LiveRunner:
    """One model held in memory behind a bounded, micro-batching queue (see module docstring)."""

    def __init__(
        self,
        spec: ModelSpec | None = None,
        *,
        loaded: LoadedModel | None = None,
        device: str = "cpu",
        slug: str | None = None,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        queue_size: int = 64,
        timeout_s: float = 30.0,
        warmup: bool = True,
        strict: bool = False,
    ) -> None:
        if spec is None and loaded is None:
            raise ValueError("LiveRunner needs a ModelSpec or a LoadedModel")
        self.spec = spec if spec is not None else loaded.spec  # type: ignore[union-attr]
        self.slug = slug or self.spec.slug
        self.device = device
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.queue_size = max(1, int(queue_size))
        self.timeout_s = float(timeout_s)
        self.warmup = warmup
        self.strict = strict  # start() raises when the model cannot be loaded (else: 503s)
        self.stats = RunnerStats()
        self._loaded = loaded
        self._queue: asyncio.Queue[_Job] | None = None
        self._backlog: collections.deque[_Job] = collections.deque()
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._model_thread: threading.Thread | None = None
        self._incoming = 0  # requests being read or decoded that will be queued soon
        self._batch_seconds = 0.05  # running estimate of one batch's duration (for Retry-After)
        self._logit_scale = 100.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.yielded = 0  # live jobs served from inside long calls (serve_waiting)
        self._in_batch = False  # a batch runs on the model thread (see ``idle``)
        self.error: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, slug: str | None = None, device: str | None = None
    ) -> LiveRunner:
        """A runner for the model of the DB at ``settings.db_url`` on the best device."""
        spec, db_slug = model_spec_from_db(settings.db_url, slug)
        return cls(
            spec,
            slug=db_slug,
            device=device or settings.resolved_device(),
            max_batch=settings.live_max_batch,
            max_wait_ms=settings.live_max_wait_ms,
            queue_size=settings.live_queue_size,
            timeout_s=settings.live_timeout_s,
        )

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._batcher is not None and not self._batcher.done()

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model (only touch it from the model thread, e.g. via :meth:`submit`)."""
        if self._loaded is None:
            raise NotRunning(self.error or "the live model is not loaded yet")
        return self._loaded

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    @property
    def queued(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + len(self._backlog)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running on the model thread: background work (the search's
        preparation, app.live.search_prep) submits its next step only then, or after a while."""
        return self.running and not self._in_batch and self.queued == 0

    async def start(self) -> None:
        """Load the model (in the model thread), warm it up and start the batcher."""
        if self.running:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-model")
        loop = asyncio.get_running_loop()
        self._loop, self._stopping = loop, False
        try:
            await loop.run_in_executor(self._executor, self._load_and_warm)
        except Exception as exc:
            # shown to visitors: no exception text (it may hold paths); the detail goes to the log
            self.error = f"could not load the live model {self.spec.name}; see the server log"
            self._executor.shutdown(wait=False)
            self._executor = None
            if self.strict:
                raise
            log.error("%s (%s); the live pages will answer 503", self.error, exc)
            return
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._batcher = asyncio.create_task(self._batch_loop(), name="live-batcher")

    async def stop(self) -> None:
        """Stop the batcher; queued requests fail with :class:`NotRunning`."""
        self._stopping = True  # a long call stops yielding (the loop no longer hands out jobs)
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None
        for job in self._drain_all():
            if not job.future.done():
                job.future.set_exception(NotRunning("the live model is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> LiveRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _load_and_warm(self) -> None:
        self._model_thread = threading.current_thread()
        if self._loaded is None:
            log.info("loading live model %s on %s", self.spec, self.device)
            self._loaded = load_model(self.spec, self.device)
        loaded = self._loaded
        self._logit_scale = zeroshot.logit_scale(loaded)
        if not self.warmup:
            return
        size = loaded.image_size
        started = time.perf_counter()
        for batch in sorted({1, self.max_batch}):
            blank = torch.zeros(batch, 3, size, size)
            activations.analyze_batch(loaded, blank, top_k=1)
        zeroshot.encode_texts(loaded, ["a photo"])
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        log.info("live model warm in %.2f s", time.perf_counter() - started)

    # -------------------------------------------------------------------------------- requests

    def preprocess(self, image: PILImage.Image) -> torch.Tensor:
        """The model's preprocessing of one RGB image → ``(3, S, S)`` float tensor (thread-safe)."""
        return self.loaded.preprocess(image)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request on its way to the queue (its upload being read or decoded): the
        batcher waits up to ``max_wait_ms`` for such requests before it runs a batch without
        them. Leave the block before awaiting the model (on the event loop thread only)."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def analyze(
        self,
        image: PILImage.Image | torch.Tensor,
        *,
        top_k: int = activations.DEFAULT_TOP_K,
        select: activations.Selector | None = None,
        timeout: float | None = None,
    ) -> activations.ImageActivations:
        """Every neuron's value on ``image``, the top ``top_k`` per layer by value with heatmaps,
        and the image embedding. ``image``: an RGB PIL image or an already preprocessed tensor.

        ``select`` (:data:`app.neurons.activations.Selector`): instead of the top ``top_k`` by
        value, the hits are the units it picks from each layer's values of every unit (it runs
        on the model thread, so it must be quick and thread-safe; if it raises, or picks a unit
        the layer does not have, this request fails with that error, not its batch)."""
        self._check_running()
        if not isinstance(image, torch.Tensor):
            image = await asyncio.to_thread(self.preprocess, image)
        return await self._enqueue(IMAGE, image, top_k=top_k, select=select, timeout=timeout)

    async def encode_texts(self, texts: Sequence[str], *, timeout: float | None = None) -> np.ndarray:
        """L2-normalised text embeddings ``(len(texts), embed_dim)``."""
        if not texts:
            return np.zeros((0, self.loaded.embed_dim), dtype=np.float32)
        return await self._enqueue(TEXT, list(texts), timeout=timeout)

    async def submit(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> T:
        """Run ``fn(loaded_model, *args, **kwargs)`` on the model thread, queued with the other
        requests (same back-pressure and timeout; ``timeout=None`` uses the runner's). Use it for
        any other model work, e.g. on-demand feature visualizations. Autograd is enabled."""
        return await self._enqueue(CALL, (fn, args, kwargs), timeout=timeout)

    def _check_running(self) -> None:
        if not self.running:
            raise NotRunning(self.error or "the live model is not running")

    async def _enqueue(
        self,
        kind: str,
        payload: Any,
        *,
        top_k: int = 0,
        select: activations.Selector | None = None,
        timeout: float | None,
    ) -> Any:
        self._check_running()
        assert self._queue is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = _Job(kind, future, payload, top_k=top_k, select=select)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise Busy(self.retry_after(), self.queued) from None
        limit = self.timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            self.stats.timeouts += 1
            raise LiveTimeout(f"the live model did not answer within {limit:g} s") from None

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the time to work through the queue (≥ 1)."""
        batches = math.ceil((self.queued + 1) / self.max_batch)
        return max(1, math.ceil(batches * self._batch_seconds))

    # ------------------------------------------------------------------ yielding from long calls

    def serve_waiting(self) -> int:
        """Run the live (image, text) requests queued meanwhile, from inside a long call.

        Call it from a function running on the model thread (via :meth:`submit`) between its
        steps; anywhere else it does nothing. Queued calls stay queued (no nesting). Returns the
        number of requests answered. Costs a dictionary look-up when nothing waits."""
        if threading.current_thread() is not self._model_thread or self._stopping or not self._live_waiting():
            return 0
        loop = self._loop
        if loop is None or loop.is_closed():
            return 0
        handoff = asyncio.run_coroutine_threadsafe(self._take_live(), loop)
        try:
            batches = handoff.result(timeout=5.0)
        except Exception:  # the loop is stopping or stuck: carry on with the long call
            handoff.cancel()
            return 0
        served = 0
        for batch in batches:
            started = time.perf_counter()
            try:
                results: list[Any] = self._run_batch(batch)
            except Exception as exc:
                log.exception("live batch of %d %s jobs failed (yielded)", len(batch), batch[0].kind)
                results = [exc] * len(batch)
            elapsed = time.perf_counter() - started
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._deliver, batch, results, elapsed)
            served += len(batch)
        self.yielded += served
        return served

    def _live_waiting(self) -> bool:
        """Whether an image or text request may be waiting (a cheap, lock-free hint)."""
        if self._queue is not None and self._queue.qsize() > 0:
            return True
        try:
            return any(job.kind != CALL for job in tuple(self._backlog))
        except RuntimeError:  # mutated while read: assume so
            return True

    async def _take_live(self) -> list[list[_Job]]:
        """On the event loop: take every queued image/text request, grouped into batches of one
        kind (at most ``max_batch``); calls and the rest keep their place in the backlog."""
        keep: list[_Job] = []
        batches: dict[str, list[list[_Job]]] = {}
        for job in self._drain_all():
            if job.future.done():
                continue
            if job.kind == CALL:
                keep.append(job)
                continue
            groups = batches.setdefault(job.kind, [[]])
            if len(groups[-1]) >= self.max_batch:
                groups.append([])
            groups[-1].append(job)
        self._backlog.extend(keep)
        return [batch for groups in batches.values() for batch in groups if batch]

    def _deliver(self, batch: list[_Job], results: Sequence[Any], elapsed: float) -> None:
        """On the event loop: record a batch's statistics and answer its waiters."""
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self.stats.batches += 1
        self.stats.jobs += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.batch_sizes[len(batch)] += 1
        for job, result in zip(batch, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    # --------------------------------------------------------------------------------- batching

    def _next_nowait(self) -> _Job | None:
        if self._backlog:
            return self._backlog.popleft()
        assert self._queue is not None
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def _drain_all(self) -> list[_Job]:
        jobs = list(self._backlog)
        self._backlog.clear()
        while self._queue is not None:
            try:
                jobs.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return jobs

    async def _collect(self) -> list[_Job]:
        """The next batch: one job, plus compatible jobs that are queued or arrive within
        ``max_wait_ms`` (the wait only lasts while requests are on their way, see :meth:`incoming`,
        so a lone request is not delayed and the model never idles waiting for nobody)."""
        assert self._queue is not None
        first = self._next_nowait() or await self._queue.get()
        while first.future.done():  # cancelled (timed out) while queued
            first = self._next_nowait() or await self._queue.get()
        batch = [first]
        if first.kind == CALL:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        skipped: list[_Job] = []
        while len(batch) < self.max_batch:
            job = self._next_nowait()
            if job is None:
                if self._incoming <= 0 or loop.time() >= deadline:
                    break
                await asyncio.sleep(min(0.0005, max(0.0, deadline - loop.time())))
                continue
            if job.future.done():
                continue
            if job.kind == first.kind:
                batch.append(job)
            else:
                skipped.append(job)
        self._backlog.extendleft(reversed(skipped))
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            started = time.perf_counter()
            self._in_batch = True
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as exc:  # the whole batch failed: tell every waiter
                log.exception("live batch of %d %s jobs failed", len(batch), batch[0].kind)
                results = [exc] * len(batch)
            finally:
                self._in_batch = False
            self._deliver(batch, results, time.perf_counter() - started)

    def _run_batch(self, batch: list[_Job]) -> list[Any]:
        """Runs on the model thread. Returns one result (or exception) per job."""
        loaded = self.loaded
        kind = batch[0].kind
        if kind == IMAGE:
            images = torch.stack([job.payload for job in batch])
            failed: dict[int, BaseException] = {}
            selects = [
                None if job.select is None else _guarded(job.select, i, failed) for i, job in enumerate(batch)
            ]
            acts = activations.analyze_batch(
                loaded, images, top_k=[job.top_k for job in batch], select=selects
            )
            return [failed.get(i, result) for i, result in enumerate(acts)]
        if kind == TEXT:
            texts = [text for job in batch for text in job.payload]
            embeddings = zeroshot.encode_texts(loaded, texts)
            out, start = [], 0
            for job in batch:
                out.append(embeddings[start : start + len(job.payload)])
                start += len(job.payload)
            return out
        results: list[Any] = []
        for job in batch:
            fn, args, kwargs = job.payload
            try:
                results.append(fn(loaded, *args, **kwargs))
            except Exception as exc:
                results.append(exc)
        return results
