"""Per-app state: the one way a view or helper keeps an object for the app's lifetime.

``app_cache(request, name, factory)`` returns ``app.state.<name>``, created by ``factory()`` on
first use (under a lock, so concurrent first requests share one object). Nothing is kept in
module globals: two apps in one process (tests, several databases) never share state.
``versioned_cache`` is the same for objects derived from the index: built on ``app_cache``, it
rebuilds them once the data version changes. The helpers below are the live pages' per-app
objects built on them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.db.version import data_version
from app.live import context as live
from app.live import jobs
from app.live.context import ModelContext, ModelContexts
from app.live.runner import LiveRunner

T = TypeVar("T")
_state_lock = threading.Lock()


def app_cache(request: Request | Any, name: str, factory: Callable[[], T]) -> T:
    """A per-app object kept on ``app.state`` (``request`` may also be the app itself)."""
    app = getattr(request, "app", request)
    state = app.state
    value = getattr(state, name, None)
    if value is None:
        with _state_lock:
            value = getattr(state, name, None)
            if value is None:
                value = factory()
                setattr(state, name, value)
    return value


class VersionedCaches:
    """Per app: ``name → (data version, object)`` of :func:`versioned_cache`."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, Any]] = {}
        self.lock = threading.Lock()


def versioned_cache(request: Request | Any, name: str, factory: Callable[[], T]) -> T:
    """A per-app object derived from the index (``request`` or the app), rebuilt by ``factory()``
    once the data version changes (:mod:`app.db.version`): a finished precompute run shows
    without a restart. For objects that do not depend on the index, use :func:`app_cache`."""
    app = getattr(request, "app", request)
    version = data_version(app.state)
    caches = app_cache(app, "versioned_caches", VersionedCaches)
    entry = caches.entries.get(name)
    if entry is None or entry[0] != version:
        with caches.lock:
            entry = caches.entries.get(name)
            if entry is None or entry[0] != version:
                entry = (version, factory())
                caches.entries[name] = entry
    return entry[1]


def runner_of(request: Request) -> LiveRunner | None:
    """The app's live runner (``None`` without one)."""
    return getattr(request.app.state, "live_runner", None)


def model_contexts(request: Request) -> ModelContexts:
    # keyed on the data version (issue 14.7): percentiles, layers and cards follow a re-index
    return versioned_cache(request, "live_models", lambda: ModelContexts(request.app.state.sessions))


def model_context(request: Request, slug: str) -> ModelContext | None:
    """The cached :class:`ModelContext` of ``slug`` (blocking on first use)."""
    return model_contexts(request).get(slug)


async def get_model_context(request: Request, slug: str) -> ModelContext | None:
    """:func:`model_context` without a worker-thread hop once it is cached."""
    contexts = model_contexts(request)
    cached = contexts.cached(slug)
    return cached if cached is not None else await run_in_threadpool(contexts.get, slug)


def renders(request: Request) -> jobs.Renders:
    """This app's on-demand feature visualization renders (claimed and stored in its database)."""
    state = request.app.state
    return app_cache(
        request, "featurevis_renders", lambda: jobs.Renders(state.write_engine, state.write_sessions)
    )


def live_status(request: Request) -> dict[str, Any]:
    return live.live_status(runner_of(request))


def require_runner(request: Request) -> LiveRunner:
    return live.require_runner(runner_of(request))


def arriving(request: Request) -> contextlib.AbstractContextManager[None]:
    return live.arriving(runner_of(request))
