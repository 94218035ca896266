"""On-demand feature visualization renders on the live runner, claimed in the DB, cancelled on time.

:func:`start_render` claims the neuron's job in the database (:mod:`app.db.featurevis_jobs`:
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
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from app.db import featurevis_jobs as jobs_db
from app.live.runner import LiveRunner
from app.neurons import featurevis as fv

log = logging.getLogger("conceptscope.live")

KINDS = ("positive", "negative")


class RenderCancelled(RuntimeError):
    """The render ran past its deadline and stopped at the next step."""


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


async def claim_and_start(
    runner: LiveRunner,
    engine: Engine,
    write_sessions: Any,
    tasks: set[asyncio.Task[None]],
    *,
    neuron_id: int,
    layer: str,
    unit: int,
    worker: str,
    client: str,
    max_jobs: int,
    per_client: int,
    timeout_s: float,
) -> jobs_db.Claim:
    """Claim the render of one neuron in the DB and, if this worker got it, start it."""
    settings, described = render_settings(runner)
    claim = await asyncio.to_thread(
        jobs_db.claim,
        engine,
        neuron_id,
        worker=worker,
        client=client,
        settings=described,
        max_jobs=max_jobs,
        per_client=per_client,
        timeout_s=timeout_s,
    )
    if claim.ok:
        task = asyncio.create_task(
            _run(runner, engine, write_sessions, neuron_id, layer, unit, settings, worker, timeout_s)
        )
        tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(tasks.discard)
    return claim
