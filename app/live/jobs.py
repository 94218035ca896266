"""On-demand feature visualization renders on the live runner, claimed in the DB, cancelled on time.

:func:`claim_and_start` claims the neuron's job in the database (:mod:`app.db.featurevis_jobs`:
one worker per neuron, a bounded total, a per-client limit), then renders the positive and
negative image in one batch on the runner's model thread. The render checks a deadline at every
optimisation step and stops there (:class:`RenderCancelled`) once its time is up, so a render
past its timeout no longer holds the model thread; between steps it also yields to live requests
(:meth:`app.live.runner.LiveRunner.serve_waiting`: queued analyses and text encodings run there),
so a render delays ``/analyze`` by about one optimisation step. The result is stored only if the
neuron still has no visualization (a precomputed image is never overwritten).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from app.db import featurevis_jobs as jobs_db
from app.live.runner import LiveRunner
from app.neurons import featurevis as fv

log = logging.getLogger("conceptscope.live")

KINDS = ("positive", "negative")


class RenderCancelled(RuntimeError):
    """The render ran past its deadline and stopped at the next step."""


@dataclass
class Renders:
    """Per app (kept with ``app_cache``): the database renders are claimed in and stored to, the
    tasks running them (kept referenced until done) and this worker's id."""

    engine: Engine
    write_sessions: Callable[[], Any]
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    worker: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Started:
    """What :func:`claim_and_start` did: the claim, and the neuron's job as it stands after it
    (read fresh: what the section shows next)."""

    claim: jobs_db.Claim
    job: jobs_db.JobView | None


def client_key(secret: bytes, address: str) -> str:
    """A keyed hash of a client address (what the jobs table stores instead of the address)."""
    return hmac.new(secret, address.encode(), hashlib.sha256).hexdigest()[:16]


def render_settings(runner: LiveRunner) -> tuple[fv.RenderSettings, dict[str, Any]]:
    """The on-demand settings for the runner's device, and how the page describes them."""
    loaded = runner.loaded
    settings = fv.default_settings(loaded)
    described = settings.to_json(
        size=settings.size,
        device=loaded.device.type,
        precision="bf16-autocast" if loaded.device.type == "cuda" else "fp32",
    )
    return settings, described


def describe(settings: dict[str, Any]) -> str:
    """One line for the page: what is being rendered and how."""
    device = str(settings.get("device", "cpu")).upper()
    start = f", colour start {settings['colour_start']}" if settings.get("colour_start") else ""
    return (
        f"positive and negative, {settings.get('steps')} steps at {settings.get('size')} px on the "
        f"{device}, {settings.get('precision', 'fp32')}{start}"
    )


def _render(
    loaded: Any, layer: str, unit: int, settings: fv.RenderSettings, deadline: float,
    between_steps: Callable[[], object] | None = None,
) -> fv.Result:
    """Runs on the live model thread; stops at the first step after ``deadline``; calls
    ``between_steps`` (the runner's :meth:`~app.live.runner.LiveRunner.serve_waiting`) after
    every step, so queued live requests are answered while the render runs."""

    def check(_step: int) -> None:
        if between_steps is not None:
            between_steps()
        if time.monotonic() > deadline:
            raise RenderCancelled("the render ran past its time limit and was cancelled")

    check(0)  # waited in the queue past its time: do not start
    return fv.render(loaded, layer, [unit, unit], signs=[1, -1], settings=settings, progress=check)


def _store(write_sessions: Any, neuron_id: int, result: fv.Result) -> bool:
    size = int(result.images.shape[-1])
    extra = {**result.settings, "seconds": round(result.seconds, 3), "on_demand": True}
    images = [
        (kind, fv.to_png(result.images[i]), size, float(result.objectives[i]), {**extra, "kind": kind})
        for i, kind in enumerate(KINDS)
    ]
    with write_sessions() as session:
        return jobs_db.store_images(session, neuron_id, images)


async def _run(
    runner: LiveRunner,
    engine: Engine,
    write_sessions: Any,
    neuron_id: int,
    layer: str,
    unit: int,
    settings: fv.RenderSettings,
    worker: str,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    status, error = "done", None
    try:
        result = await runner.submit(
            _render, layer, unit, settings, deadline, runner.serve_waiting, timeout=timeout_s + 5
        )
        await asyncio.to_thread(_store, write_sessions, neuron_id, result)
    except RenderCancelled as exc:
        status, error = "cancelled", str(exc)
    except Exception as exc:  # shown on the page; a POST may retry
        log.warning("on-demand feature visualization of neuron %s failed: %s", neuron_id, exc)
        status, error = "failed", str(exc) or type(exc).__name__
    try:
        await asyncio.to_thread(jobs_db.finish, engine, neuron_id, worker, status, error)
    except Exception as exc:  # the row expires at its deadline anyway
        log.warning("could not record the end of render %s: %s", neuron_id, exc)


def _job_now(write_sessions: Callable[[], Any], neuron_id: int) -> jobs_db.JobView | None:
    with write_sessions() as session:
        return jobs_db.job_of(session, neuron_id)


async def claim_and_start(
    renders: Renders,
    runner: LiveRunner,
    *,
    neuron_id: int,
    layer: str,
    unit: int,
    client: str,
    max_jobs: int,
    per_client: int,
    timeout_s: float,
) -> Started:
    """Claim the render of one neuron in the DB and, if this worker got it, start it; then read
    the neuron's job as it stands."""
    settings, described = render_settings(runner)
    claim = await asyncio.to_thread(
        jobs_db.claim,
        renders.engine,
        neuron_id,
        worker=renders.worker,
        client=client,
        settings=described,
        max_jobs=max_jobs,
        per_client=per_client,
        timeout_s=timeout_s,
    )
    if claim.ok:
        task = asyncio.create_task(
            _run(
                runner, renders.engine, renders.write_sessions, neuron_id, layer, unit, settings,
                renders.worker, timeout_s,
            )
        )  # fmt: skip
        renders.tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(renders.tasks.discard)
        await asyncio.sleep(0)  # let the task enqueue before the job is read
    job = await asyncio.to_thread(_job_now, renders.write_sessions, neuron_id)
    return Started(claim, job)
