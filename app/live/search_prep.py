"""The search's per-model preparation: computed once per model and data, in the background.

Before ``/search`` can answer for a model it needs, per model and search data key
(:func:`app.db.search_key.search_data_key`: changes only when a precompute run finishes):

* the last-block unit directions and unit stds (read from the index);
* the null: 256 ordinary words encoded by the live model, fitted per layer
  (:func:`app.neurons.calibration.fit_null`), and the recipe's null (the same words' recipe fits);
* the evidence inputs (:mod:`app.neurons.concept_search`): the concept profiles, the label
  vocabulary's text embeddings and the activation sample's image embeddings.

On a big model that is minutes of model work (random RN50x4 on a busy CPU: 71–242 s), far past
a request's time limit. So it is one shared background job per model (:class:`Preparation`),
started at server startup (:func:`Preparations.start`, the warm-up) and never tied to a request:
a request that gives up waiting does not cancel it, and every later request finds it running or
done. The job runs on the live runner at low priority, in steps (:data:`TEXT_CHUNK` words or
:data:`IMAGE_CHUNK` images per :meth:`LiveRunner.submit` call): a step is submitted only when the
runner is idle (nothing queued or running; after :data:`STARVE_S` of a busy runner it queues
behind the waiting requests, so a loaded server still makes progress), and inside a step the
live analyses and text encodings queued meanwhile are served every :data:`SUB_BATCH` items
(:meth:`LiveRunner.serve_waiting`, as the on-demand renders do). Each step waits up to
:data:`STEP_TIMEOUT_S` for its turn, and a full queue is retried, so a busy server slows the
preparation down but never drops it.

A search that arrives meanwhile waits only when the job will be done soon (its estimated time
left fits in :data:`MAX_WAIT_S`); otherwise :meth:`Preparations.prepared` raises
:class:`Preparing` at once, and the page answers 503 with ``Retry-After`` and the progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.db import search as search_db
from app.db.search import LayerDirections, LayerEvidence
from app.db.search_key import search_data_key
from app.live.context import ModelContext
from app.live.runner import Busy, LiveRunner, LiveTimeout, NotRunning

log = logging.getLogger("conceptscope.live")

TEXT_CHUNK = 64  # words per model step
IMAGE_CHUNK = 64  # sample thumbnails per model step
SUB_BATCH = 16  # within a step, live requests are served after every SUB_BATCH items
STARVE_S = 10.0  # a step waits this long for an idle runner, then queues behind the waiting requests
IDLE_POLL_S = 0.02
STEP_TIMEOUT_S = 600.0  # how long one step may wait for its turn on a busy runner (then it is retried)
MAX_WAIT_S = 10.0  # a search waits for a preparation expected to finish within this
UNKNOWN_WAIT_S = 1.0  # ... and this long for one that has no estimate yet (no step done)
RETRY_FAILED_S = 10.0  # a failed preparation is started again by a search after this


@dataclass
class Prepared:
    """Everything a search of one model needs besides the query's own model work."""

    key: str
    directions: dict[str, LayerDirections]  # last-block layer -> directions and unit stds
    layers: dict[str, LayerEvidence]  # layers with a concept profile (evidence)
    vocab_emb: dict[str, np.ndarray]  # layer -> (concepts, D) text embeddings of its vocabulary
    image_emb: dict[int, np.ndarray]  # sample image id -> (D,) image embedding
    nulls: dict[str, Any]  # layer -> NullModel (app.neurons.calibration)
    recipe_null: dict[str, float]  # the recipe fits of the null words (median, p95, n)
    seconds: float = 0.0


@dataclass(eq=False)
class Preparation:
    """One model's preparation at one search data key: progress, then a result or an error."""

    slug: str
    key: str
    done: int = 0  # words and images encoded (and recipe null fits made) so far
    total: int = 0  # all of them (0 while reading the index)
    phase: str = "reading the index"
    started: float = field(default_factory=time.monotonic)
    steps_started: float | None = None
    result: Prepared | None = None
    error: str | None = None
    failed_at: float | None = None
    task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.result is not None

    @property
    def percent(self) -> int:
        if self.ready:
            return 100
        return min(99, math.floor(100 * self.done / self.total)) if self.total else 0

    def eta(self) -> float | None:
        """Seconds left, from the pace so far (``None`` before the first step is done)."""
        if self.ready:
            return 0.0
        if self.steps_started is None or self.done <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self.steps_started
        return elapsed * (self.total - self.done) / self.done

    def retry_after(self) -> int:
        eta = self.eta()
        return 5 if eta is None else max(1, min(60, math.ceil(eta)))

    def message(self) -> str:
        if self.error is not None:
            return f"Preparing search for model {self.slug} failed ({self.error}); it is retried shortly."
        eta = self.eta()
        left = f", about {math.ceil(eta)} s left" if eta is not None else ""
        return f"Preparing search for model {self.slug}: {self.percent}% done ({self.phase}{left})."

    def status(self) -> dict[str, Any]:
        """What the page and its JSON twin show."""
        state = "ready" if self.ready else ("failed" if self.error is not None else "preparing")
        return {
            "model": self.slug,
            "state": state,
            "percent": self.percent,
            "phase": "done" if self.ready else self.phase,
            "done": self.done,
            "total": self.total,
            "seconds": round((self.result.seconds if self.result else time.monotonic() - self.started), 1),
            "retry_after": 0 if self.ready else self.retry_after(),
            "message": None if self.ready else self.message(),
        }


class Preparing(Exception):
    """The model's search is not prepared yet (HTTP 503 + ``Retry-After``)."""

    def __init__(self, job: Preparation) -> None:
        super().__init__(job.message())
        self.job = job
        self.retry_after = job.retry_after()


def _encode_texts(loaded: Any, texts: list[str]) -> np.ndarray:
    from app.neurons.zeroshot import encode_texts

    return encode_texts(loaded, texts)


def _embed_images(loaded: Any, images: list[Any]) -> np.ndarray:
    from app.neurons.zeroshot import encode_images

    return encode_images(loaded, images)


def _in_sub_batches(
    loaded: Any,
    fn: Callable[[Any, list[Any]], np.ndarray],
    items: list[Any],
    between: Callable[[], object],
    progress: Callable[[int], None],
) -> np.ndarray:
    """On the model thread: ``fn`` over ``items`` in SUB_BATCH pieces, serving the live requests
    queued meanwhile (``between``: the runner's ``serve_waiting``) between the pieces and
    reporting the items done so far (``progress``)."""
    out = []
    for start in range(0, len(items), SUB_BATCH):
        if start:
            between()
        out.append(fn(loaded, items[start : start + SUB_BATCH]))
        progress(start + len(out[-1]))
    return np.concatenate(out)


class Preparations:
    """The app's search preparations, one job per model (the latest search data key wins)."""

    def __init__(self, sessions: Callable[[], Any], runner: LiveRunner) -> None:
        self.sessions = sessions
        self.runner = runner
        self.jobs: dict[str, Preparation] = {}
        self.started = 0  # jobs started in this process (a test counts them)
        self._keys: dict[tuple[str, str], str] = {}  # (slug, data version) -> search data key

    async def key(self, ctx: ModelContext, version: str) -> str:
        """The search data key of ``ctx`` (read once per data version)."""
        found = self._keys.get((ctx.slug, version))
        if found is None:

            def read() -> str:
                with self.sessions() as session:
                    return search_data_key(session, ctx.id)

            found = await run_in_threadpool(read)
            if len(self._keys) > 64:
                self._keys.clear()
            self._keys[(ctx.slug, version)] = found
        return found

    def start(self, ctx: ModelContext, key: str) -> Preparation:
        """The model's preparation at ``key``: the running or finished one, else a new job (a
        job for an older key is cancelled; a failed one is restarted after RETRY_FAILED_S)."""
        job = self.jobs.get(ctx.slug)
        if job is not None and job.key == key:
            if job.error is None or time.monotonic() - (job.failed_at or 0.0) < RETRY_FAILED_S:
                return job
        if job is not None and job.task is not None and not job.task.done():
            job.task.cancel()
        job = Preparation(ctx.slug, key)
        job.task = asyncio.create_task(self._run(job, ctx), name=f"search-prep-{ctx.slug}")
        self.jobs[ctx.slug] = job
        self.started += 1
        return job

    async def prepared(self, ctx: ModelContext, version: str, *, max_wait_s: float = MAX_WAIT_S) -> Prepared:
        """The model's :class:`Prepared`. Waits (at most ``max_wait_s``) only when the job's
        estimated time left fits in it, else raises :class:`Preparing` at once (after at most
        UNKNOWN_WAIT_S while there is no estimate yet). Never cancels the job."""
        job = self.start(ctx, await self.key(ctx, version))
        if job.result is not None:
            return job.result
        deadline = time.monotonic() + max_wait_s
        unknown_deadline = time.monotonic() + min(UNKNOWN_WAIT_S, max_wait_s)
        committed = False  # once the job looked done within the deadline, wait for it to the end
        while job.result is None and job.error is None and job.task is not None:
            now = time.monotonic()
            if now >= deadline:
                break
            if not committed:
                eta = job.eta()
                if eta is not None and now + eta <= deadline:
                    committed = True
                elif eta is not None or now >= unknown_deadline:
                    break  # not soon: answer at once (503 with the progress)
            # asyncio.wait never cancels what it waits for
            await asyncio.wait({job.task}, timeout=0.1)
        if job.result is not None:
            return job.result
        raise Preparing(job)

    async def close(self) -> None:
        """Cancel running jobs (the server is stopping)."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------------------ the job

    async def _step(
        self, job: Preparation, fn: Callable[[Any, list[Any]], np.ndarray], items: list[Any]
    ) -> np.ndarray:
        """One model step, submitted once the runner is idle (or has been busy for STARVE_S);
        retried when the queue is full or the step waited past STEP_TIMEOUT_S (only a stopped
        runner ends the job)."""
        runner = self.runner
        base = job.done

        def progress(n: int) -> None:  # on the model thread; the page reads it
            job.done = base + n

        while True:
            since = time.monotonic()
            while not getattr(runner, "idle", True) and time.monotonic() - since < STARVE_S:
                if not runner.running:
                    raise NotRunning("the live model stopped")
                await asyncio.sleep(IDLE_POLL_S)
            try:
                between = runner.serve_waiting
                found = await runner.submit(
                    _in_sub_batches, fn, items, between, progress, timeout=STEP_TIMEOUT_S
                )
                job.done = base + len(items)
                return found
            except Busy as exc:
                await asyncio.sleep(max(0.5, float(exc.retry_after)))
            except LiveTimeout:
                log.info("a search preparation step waited %.0f s; retrying", STEP_TIMEOUT_S)
            except NotRunning:
                raise

    async def _encode(self, job: Preparation, texts: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(texts), TEXT_CHUNK):
            chunk = list(texts[start : start + TEXT_CHUNK])
            out.update(zip(chunk, await self._step(job, _encode_texts, chunk), strict=True))
        return out

    async def _embed(self, job: Preparation, ids: Sequence[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), IMAGE_CHUNK):
            chunk = list(ids[start : start + IMAGE_CHUNK])

            def read(chunk: list[int] = chunk) -> dict[int, Any]:
                with self.sessions() as session:
                    return search_db.thumbnails(session, chunk)

            thumbs = await run_in_threadpool(read)
            good = [i for i in chunk if i in thumbs]
            if good:
                emb = await self._step(job, _embed_images, [thumbs[i] for i in good])
                out.update(zip(good, emb, strict=True))
            job.done += len(chunk) - len(good)  # unreadable thumbnails count as done
        return out

    async def _run(self, job: Preparation, ctx: ModelContext) -> None:
        try:
            job.result = await self._compute(job, ctx)
            log.info("search prepared for %s in %.1f s", ctx.slug, job.result.seconds)
        except asyncio.CancelledError:
            job.error, job.failed_at = "cancelled", time.monotonic()
            raise
        except Exception as exc:  # shown on the page; the next search after RETRY_FAILED_S restarts it
            log.warning("search preparation for %s failed: %s", ctx.slug, exc, exc_info=True)
            job.error = str(exc) or type(exc).__name__
            job.failed_at = time.monotonic()

    async def _compute(self, job: Preparation, ctx: ModelContext) -> Prepared:
        from app.neurons.calibration import fit_null, null_words, recipe_null
        from app.neurons.recipes import fit_recipe

        started = time.monotonic()

        def load() -> tuple[dict[str, LayerDirections], dict[str, LayerEvidence], list[str]]:
            with self.sessions() as session:
                return (
                    search_db.layer_directions(session, ctx.id),
                    search_db.search_evidence(session, ctx.id),
                    search_db.vocabulary(session, ctx.slug),
                )

        dirs, layers, vocabulary = await run_in_threadpool(load)
        nulls_words = null_words()
        texts = list(dict.fromkeys([*nulls_words, *vocabulary,
                                    *(c for layer in layers.values() for c in layer.concepts)]))  # fmt: skip
        ids = sorted({i for layer in layers.values() for i in layer.image_ids})
        n_fits = len(nulls_words) if dirs else 0  # the recipe null's fits (CPU, counted as steps)
        job.total = len(texts) + len(ids) + n_fits
        job.steps_started = time.monotonic()
        job.phase = "encoding words"
        emb = await self._encode(job, texts)
        job.phase = "embedding the sample images"
        image_emb = await self._embed(job, ids)
        job.phase = "fitting the null"

        def fit() -> tuple[dict[str, Any], dict[str, float]]:
            null_emb = np.stack([emb[w] for w in nulls_words])
            nulls = {name: fit_null((null_emb @ d.directions.T) * d.scale) for name, d in dirs.items()}
            fits: list[float] = []
            if dirs:
                matrix = next(iter(dirs.values())).directions  # the recipe's layer (live.search.recipe_fit)
                for e in null_emb:
                    fits.append(fit_recipe(e, matrix).cosine)
                    job.done += 1
            return nulls, recipe_null(fits)

        nulls, recipe_fits = await run_in_threadpool(fit)
        dim = next(iter(emb.values())).shape[0]
        vocab_emb = {
            name: np.stack([emb[c] for c in layer.concepts]) if layer.concepts else np.zeros((0, dim), "f4")
            for name, layer in layers.items()
        }
        seconds = time.monotonic() - started
        return Prepared(job.key, dirs, layers, vocab_emb, image_emb, nulls, recipe_fits, seconds)
