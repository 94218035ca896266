"""Per-app state: the one way a view or helper keeps an object for the app's lifetime.

``app_cache(request, name, factory)`` returns ``app.state.<name>``, created by ``factory()`` on
first use (under a lock, so concurrent first requests share one object). Nothing is kept in
module globals: two apps in one process (tests, several databases) never share state.
The helpers below are the live pages' per-app objects built on it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.live import context as live
from app.live.context import ModelContext, ModelContexts
from app.live.runner import LiveRunner
from app.web.cache import versioned_cache

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


def live_status(request: Request) -> dict[str, Any]:
    return live.live_status(runner_of(request))


def require_runner(request: Request) -> LiveRunner:
    return live.require_runner(runner_of(request))


def arriving(request: Request) -> contextlib.AbstractContextManager[None]:
    return live.arriving(runner_of(request))
