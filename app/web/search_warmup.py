"""The app's search preparations (:mod:`app.live.search_prep`) and their warm-up at startup.

``create_app``'s lifespan calls :func:`warm_up` once the live runner has started: the
preparation of the runner's model (the only one the server can search) starts then, in the
background, so the first search finds it done instead of paying for it. :func:`stop` cancels
it when the server stops.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.db.version import data_version
from app.live.context import ModelContext
from app.live.search_prep import Preparations, Prepared
from app.web.state import app_cache, get_model_context

log = logging.getLogger("conceptscope.web")


def preparations(request: Any) -> Preparations | None:
    """The app's :class:`Preparations` (``request`` may be the app; ``None`` without a runner)."""
    app = getattr(request, "app", request)
    runner = getattr(app.state, "live_runner", None)
    if runner is None:
        return None
    return app_cache(app, "search_preparations", lambda: Preparations(app.state.sessions, runner))


async def _version(app: Any) -> str:
    clock = getattr(app.state, "data_version", None)
    if clock is not None and clock.fresh():
        return clock.current()
    return await run_in_threadpool(data_version, app.state)


async def prepared(request: Any, ctx: ModelContext) -> Prepared:
    """The model's prepared search (raises :class:`~app.live.search_prep.Preparing` while the
    background job runs and will not be done within a short wait)."""
    preps = preparations(request)
    if preps is None:
        raise RuntimeError("search preparation needs a live runner")
    return await preps.prepared(ctx, await _version(request.app))


async def warm_up(app: Any) -> None:
    """Start preparing the live model's search (never raises: pages serve without it)."""
    try:
        runner = getattr(app.state, "live_runner", None)
        preps = preparations(app)
        if preps is None or not getattr(runner, "running", False):
            return
        ctx = await get_model_context(SimpleNamespace(app=app), runner.slug)  # type: ignore[arg-type]
        if ctx is None:
            return
        job = preps.start(ctx, await preps.key(ctx, await _version(app)))
        log.info("preparing search for %s in the background", job.slug)
    except Exception as exc:  # the first search starts it instead
        log.warning("search warm-up not started: %s", exc)


async def stop(app: Any) -> None:
    preps = getattr(app.state, "search_preparations", None)
    if preps is not None:
        await preps.close()
