"""What the live pages share: each indexed model's context, the runner's status, its errors.

* :class:`ModelContexts`: per app, a thread-safe cache ``slug -> ModelContext`` (layers and the
  percentile tables of one indexed model), loaded once through the data layer.
* :func:`live_status`, :func:`require_runner`, :func:`runner_serves`: whether the live runner
  works here, and why not.
* :func:`live_http_error`: a :class:`~app.live.runner.LiveError` as an HTTP 503 with
  ``Retry-After`` (every live route maps runner errors the same way).
* :func:`arriving`: ``runner.incoming()`` when a runner exists (the batcher may wait for a
  request that is still being read or decoded).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from sqlalchemy.orm import Session

from app.db import queries
from app.db.samples import load_activation_samples
from app.live.runner import Busy, LiveError, LiveRunner, LiveTimeout
from app.neurons import activations as core


@dataclass(frozen=True)
class LayerMeta:
    id: int
    name: str
    kind: str
    position: int
    n_units: int
    grid: tuple[int, int]
    is_last: bool


@dataclass
class ModelContext:
    """What the live pages need to know about one indexed model (cached per app)."""

    id: int
    slug: str
    name: str
    layers: list[LayerMeta]
    percentiles: core.Percentiles
    cards: dict[str, tuple[float, dict[int, tuple[Any, ...]]]] = field(default_factory=dict)

    def layer(self, name: str) -> LayerMeta | None:
        return next((layer for layer in self.layers if layer.name == name), None)


def load_model_context(session: Session, slug: str) -> ModelContext | None:
    """The :class:`ModelContext` of model ``slug`` read from the DB (``None`` when absent)."""
    model = queries.get_model(session, slug)
    if model is None:
        return None
    layers = [
        LayerMeta(r.id, r.name, r.kind, r.position, r.n_units, (r.grid_h, r.grid_w), r.is_last)
        for r in queries.list_layers(session, model)
    ]
    percentiles = core.Percentiles.from_arrays(load_activation_samples(session, model.id))
    return ModelContext(model.id, model.slug, model.name, layers, percentiles)


class ModelContexts:
    """Per app: ``slug -> ModelContext``, each loaded once (under a lock) from ``sessions``."""

    def __init__(self, sessions: Callable[[], Any]) -> None:
        self.sessions = sessions
        self._cache: dict[str, ModelContext] = {}
        self._lock = threading.Lock()

    def cached(self, slug: str) -> ModelContext | None:
        """The context if it is loaded already (no DB access)."""
        return self._cache.get(slug)

    def get(self, slug: str) -> ModelContext | None:
        """The context of ``slug``, loading it on first use (blocking: call from a worker thread)."""
        if slug in self._cache:
            return self._cache[slug]
        with self._lock:
            if slug in self._cache:
                return self._cache[slug]
            with self.sessions() as session:
                ctx = load_model_context(session, slug)
            if ctx is not None:
                self._cache[slug] = ctx
            return ctx


def live_status(runner: LiveRunner | None) -> dict[str, Any]:
    """Whether live analysis works here, and why not (for pages and JSON)."""
    if runner is None:
        return {
            "available": False,
            "model": None,
            "reason": "This server runs without a live model "
            "(started with --no-live, or its database has no model).",
        }
    if not runner.running:
        return {
            "available": False,
            "model": runner.slug,
            "reason": runner.error or "The live model is still loading; try again in a moment.",
        }
    return {"available": True, "model": runner.slug, "device": str(runner.device), "reason": None}


def require_runner(runner: LiveRunner | None) -> LiveRunner:
    """``runner`` when it is running; else a 503 with ``Retry-After`` saying why not."""
    status = live_status(runner)
    if not status["available"]:
        raise HTTPException(503, status["reason"], headers={"Retry-After": "5"})
    assert runner is not None
    return runner


def runner_serves(runner: Any, slug: str) -> tuple[bool, str | None]:
    """Whether ``runner`` is running and holds the model called ``slug`` (and why not)."""
    if runner is None:
        return False, "no live model is running in this server"
    if not getattr(runner, "running", False):
        return False, "the live model is not running"
    try:
        loaded = runner.loaded
    except Exception as exc:  # not loaded
        return False, str(exc)
    if loaded.spec.slug != slug:
        return False, f"the live model is {loaded.spec.slug!r}, not {slug!r}"
    return True, None


def live_http_error(exc: LiveError) -> HTTPException:
    """Runner errors → 503 with ``Retry-After``."""
    if isinstance(exc, Busy):
        return HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, LiveTimeout):
        return HTTPException(503, f"The live model is overloaded: {exc}.", headers={"Retry-After": "5"})
    return HTTPException(503, str(exc), headers={"Retry-After": "5"})


def arriving(runner: LiveRunner | None) -> contextlib.AbstractContextManager[None]:
    """``runner.incoming()`` when a live model runs (see :meth:`LiveRunner.incoming`)."""
    return runner.incoming() if runner is not None else contextlib.nullcontext()
