"""The data version of an index: a short string that changes whenever what pages show changes.

An index only changes when a precompute run finishes (every stage records a ``runs`` row and
sets ``finished_at``), when labels are imported or set by hand, or when the web renders a feature
visualization on demand. The version is built from a few primary-key maxima and the runs table
(tiny), so reading it costs one short query. :class:`VersionClock` re-reads it at most every
``ttl`` seconds per process: a finished precompute run shows within ``ttl`` without a restart.

Caches of derived data (rendered pages, percentiles, directions, atlas layouts, summaries) key
on this string.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.schema import FeatureVisualization, Label, Run

DEFAULT_TTL_S = 1.0


def read_data_version(session: Session) -> str:
    """The current data version of the index behind ``session`` (16 hex digits)."""
    runs = session.execute(
        select(func.count(Run.id), func.max(Run.id), func.max(Run.finished_at)).where(Run.status == "done")
    ).one()
    running = session.scalar(select(func.count(Run.id)).where(Run.status != "done"))
    fv = session.scalar(select(func.max(FeatureVisualization.id)))
    labels = session.scalar(select(func.max(Label.id)))
    text = f"{runs[0]}|{runs[1]}|{runs[2]}|{running}|{fv}|{labels}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class VersionClock:
    """The data version of one database, re-read at most every ``ttl`` seconds (thread-safe).

    ``sessions`` is a session factory (e.g. the web app's read-only one). When reading fails
    (database busy or gone), the last known version is kept.
    """

    def __init__(self, sessions: Callable[[], Session], ttl: float = DEFAULT_TTL_S) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._value = ""
        self._next = 0.0
        self._lock = threading.Lock()

    def fresh(self) -> bool:
        """Whether :meth:`current` would answer without waiting for the database."""
        return bool(self._value) and time.monotonic() < self._next

    def current(self) -> str:
        """The version. In the second half of its ``ttl`` one caller re-reads it while the others
        keep the current value (refresh-ahead: under steady load nobody waits for the query); once
        the ``ttl`` has passed, callers wait for the re-read (a finished run shows within ``ttl``)."""
        now = time.monotonic()
        if self._value and now < self._next - self.ttl / 2:
            return self._value
        if self._value and now < self._next:
            if not self._lock.acquire(blocking=False):
                return self._value  # someone is re-reading it
            try:
                self._read()
            finally:
                self._lock.release()
            return self._value
        with self._lock:
            if not self._value or time.monotonic() >= self._next:
                self._read()
            return self._value

    def _read(self) -> None:
        try:
            with self.sessions() as session:
                self._value = read_data_version(session)
        except Exception:
            if not self._value:
                self._value = "unknown"
        self._next = time.monotonic() + self.ttl

    def invalidate(self) -> None:
        """Force the next :meth:`current` to re-read (after this process wrote something)."""
        self._next = 0.0


def data_version(app: object) -> str:
    """The data version of a web app's index (``app.state.data_version``, a :class:`VersionClock`).

    Accepts the FastAPI app or its ``state``; returns ``""`` when the app has no clock.
    """
    state = getattr(app, "state", app)
    clock = getattr(state, "data_version", None)
    return clock.current() if clock is not None else ""
