"""Stored analyses (uploads analysed by the live model): ids, the one write path, eviction, reads.

* Ids: ``HMAC-SHA256(server secret, model slug ‖ image bytes)``, 24 hex digits. The same image on
  the same server gets the same id (re-uploads refresh it), but nobody without the secret (kept
  in the data directory, see :func:`app.config.server_secret`) can compute an id in advance.
* Writes: :class:`AnalysisWriter`, one per app and write engine. Concurrent stores in a process
  are group-committed: whoever takes the write lock writes every analysis waiting for it in one
  transaction. Every store gives up after ``timeout_s`` (2 s by default) -- waiting for the lock,
  or for SQLite's write lock held by another process (a precompute stage) -- and raises
  :class:`NotStored`; the page is still shown, marked "not stored".
* Eviction: the oldest analyses go once there are more than ``cap_rows`` of them or they take
  more than ``cap_bytes`` (result JSON + image copy, counted in ``analyses.size_bytes``); their
  image blobs go with them unless something else references them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db import MIME_EXT
from app.db.schema import Analysis, Base, Blob, Image, Model, utcnow
from app.db.units import UnitSummary, unit_summaries

T = TypeVar("T")

ID_LENGTH = 24
WRITE_TIMEOUT_S = 2.0


class NotStored(RuntimeError):
    """An analysis could not be stored (busy database, read-only file ...): the message says why."""


def analysis_id(secret: bytes, slug: str, data: bytes, params: dict[str, Any] | None = None) -> str:
    """The id of (model, image bytes, the parameters that shape the stored result, e.g. ``top_k``)
    on this server: an HMAC keyed by the server secret. Other parameters give another id, so
    nobody can change what an existing permalink shows."""
    shaped = json.dumps(params or {}, sort_keys=True, separators=(",", ":")).encode()
    message = slug.encode() + b"\0" + shaped + b"\0" + data
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:ID_LENGTH]


@dataclass(eq=False)
class StoreJob:
    """One analysis to store: its id, model, JPEG copy (bytes, width, height), params, result."""

    id: str
    model_id: int
    image: tuple[bytes, int, int]
    params: dict[str, Any]
    result: dict[str, Any]
    created_at: datetime = field(default_factory=utcnow)
    done: threading.Event = field(default_factory=threading.Event)
    stored: bool | None = None
    error: str | None = None

    @property
    def size_bytes(self) -> int:
        return len(json.dumps(self.result, separators=(",", ":"))) + len(self.image[0])


def _blob_references() -> list[Any]:
    """Every column that references ``blobs.sha256`` (found from the schema)."""
    return [
        fk.parent
        for table in Base.metadata.tables.values()
        for fk in table.foreign_keys
        if fk.column.table.name == "blobs"
    ]


def _write_one(conn: Connection, job: StoreJob) -> None:
    data, width, height = job.image
    sha = hashlib.sha256(data).hexdigest()
    values = {
        "image_sha256": sha,
        "params": job.params,
        "result": job.result,
        "created_at": job.created_at,
        "size_bytes": job.size_bytes,
    }
    if conn.execute(select(Blob.sha256).where(Blob.sha256 == sha)).first() is None:
        blob = {"sha256": sha, "mime": "image/jpeg", "data": data, "width": width, "height": height}
        conn.execute(insert(Blob).values(**blob))
    if conn.execute(select(Analysis.id).where(Analysis.id == job.id)).first() is not None:
        return  # the first stored copy is kept: a permalink never changes what it shows
    row = {"id": job.id, "model_id": job.model_id, "kind": "image", **values}
    conn.execute(_insert_if_absent(conn, Analysis).values(**row))


def _insert_if_absent(conn: Connection, table: Any) -> Any:
    """``INSERT`` that does nothing when the primary key exists (another worker may store the same
    id at the same moment)."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        dialect_insert = sqlite_insert if name == "sqlite" else pg_insert
        return dialect_insert(table).on_conflict_do_nothing()
    return insert(table)


def evict_oldest(
    conn: Connection, cap: int, cap_bytes: int | None = None, keep: frozenset[str] = frozenset()
) -> int:
    """Delete the oldest analyses beyond ``cap`` rows or ``cap_bytes`` bytes (never those in
    ``keep``), and their image blobs when nothing else uses them. Returns how many went."""
    total = int(conn.execute(select(func.count()).select_from(Analysis)).scalar() or 0)
    size = int(conn.execute(select(func.coalesce(func.sum(Analysis.size_bytes), 0))).scalar() or 0)
    excess_rows = total - max(0, cap)
    excess_bytes = size - cap_bytes if cap_bytes is not None else 0
    if excess_rows <= 0 and excess_bytes <= 0:
        return 0
    old_ids: list[str] = []
    shas: set[str] = set()
    freed = 0
    rows = conn.execute(
        select(Analysis.id, Analysis.image_sha256, Analysis.size_bytes)
        .order_by(Analysis.created_at, Analysis.id)
    )
    for the_id, sha, nbytes in rows:
        if len(old_ids) >= excess_rows and freed >= excess_bytes:
            break
        if the_id in keep:
            continue
        old_ids.append(the_id)
        freed += int(nbytes or 0)
        if sha:
            shas.add(sha)
    if not old_ids:
        return 0
    conn.execute(delete(Analysis).where(Analysis.id.in_(old_ids)))
    for sha in shas:
        used = any(
            conn.execute(select(column).where(column == sha).limit(1)).first() is not None
            for column in _blob_references()
        )
        if not used:
            conn.execute(delete(Blob).where(Blob.sha256 == sha))
    return len(old_ids)


def bounded_wait(conn: Connection, seconds: float) -> None:
    """Make this transaction's lock waits give up after ``seconds`` (SQLite and PostgreSQL)."""
    ms = max(1, int(seconds * 1000))
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")


class AnalysisWriter:
    """This app's writes of analyses through one engine (group commit, bounded waits).

    Concurrent requests queue on a lock instead of inside SQLite's busy handler, and one
    transaction (one commit) covers every analysis waiting when the lock is taken. Other
    processes (web workers, precompute stages) still meet the database's own locking, bounded by
    ``timeout_s``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        cap_rows: int,
        cap_bytes: int | None = None,
        timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.cap_rows = cap_rows
        self.cap_bytes = cap_bytes
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.mutex = threading.Lock()
        self.pending: list[StoreJob] = []

    def _write(self, group: list[StoreJob], deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no time left")
        with self.engine.begin() as conn:
            bounded_wait(conn, remaining)
            for each in group:
                _write_one(conn, each)
            evict_oldest(conn, self.cap_rows, self.cap_bytes, keep=frozenset(j.id for j in group))

    def store(self, job: StoreJob) -> None:
        """Store ``job`` (insert or refresh) within ``timeout_s``, else raise :class:`NotStored`."""
        deadline = time.monotonic() + self.timeout_s
        with self.mutex:
            self.pending.append(job)
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            with self.mutex:
                if job in self.pending:  # nobody took it: give up
                    self.pending.remove(job)
                    raise NotStored("the database is busy (another write holds it)")
            job.done.wait(max(0.0, deadline - time.monotonic()) + 0.5)  # a group writing it now
        else:
            try:
                alone = False
                if not job.done.is_set():
                    with self.mutex:
                        group, self.pending = self.pending, []
                    alone = len(group) == 1
                    try:
                        self._write(group, deadline)
                        outcome, error = True, None
                    except Exception as exc:  # busy, read-only: each job tries again on its own
                        outcome, error = None, _reason(exc)
                    for each in group:
                        each.stored, each.error = outcome, error
                        each.done.set()
                if job.stored is None and not alone:
                    try:
                        self._write([job], deadline)
                        job.stored, job.error = True, None
                    except Exception as exc:
                        job.error = _reason(exc)
            finally:
                self.lock.release()
        if not job.stored:
            raise NotStored(job.error or "the database did not answer in time")


def _reason(exc: BaseException) -> str:
    """A short, path-free reason for a failed write (shown on the page)."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text or isinstance(exc, TimeoutError) or "timeout" in text:
        return "the database is busy (another write holds it)"
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "the database is read-only"
    return f"the database refused the write ({type(exc).__name__})"


@dataclass(frozen=True)
class StoredAnalysis:
    id: str
    model_id: int
    image_sha256: str | None
    result: dict[str, Any]
    created_at: datetime


def load_analysis(session: Session, the_id: str) -> tuple[StoredAnalysis, str, int | None, int | None] | None:
    """(analysis, model slug, image width, image height) of a stored analysis."""
    row = session.execute(
        select(Analysis.id, Analysis.model_id, Analysis.image_sha256, Analysis.result, Analysis.created_at)
        .where(Analysis.id == the_id)
    ).first()
    if row is None:
        return None
    found = StoredAnalysis(*row)
    slug = session.scalar(select(Model.slug).where(Model.id == found.model_id))
    size = session.execute(select(Blob.width, Blob.height).where(Blob.sha256 == found.image_sha256)).first()
    return found, slug or "?", *(size or (None, None))


def ensure_web_tables(engine: Engine) -> None:
    """Create the tables the web process owns when missing (analyses, featurevis_jobs) and add
    ``analyses.size_bytes`` to a database made before it existed (additive)."""
    from sqlalchemy import inspect as sa_inspect

    from app.db.schema import FeatureVisJob

    Analysis.__table__.create(engine, checkfirst=True)
    FeatureVisJob.__table__.create(engine, checkfirst=True)
    columns = {c["name"] for c in sa_inspect(engine).get_columns("analyses")}
    if "size_bytes" not in columns:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE analyses ADD COLUMN size_bytes INTEGER")


@dataclass(frozen=True)
class ExampleImage:
    """A dataset image offered to try a page with (the analyze page's examples, the typographic
    lab's picker), and its thumbnail."""

    id: int
    caption: str | None
    """The image's caption, else its key."""
    key: str | None
    meta: Any
    sha256: str
    mime: str

    @property
    def ext(self) -> str:
        """The thumbnail's file extension (``bin`` for an unknown type)."""
        return MIME_EXT.get(self.mime, "bin")


def example_images(session: Session, n: int, *, spread: bool = True) -> list[ExampleImage]:
    """``n`` dataset images with thumbnails, in dataset order: spread over the dataset (every
    ``total // n``-th, the analyze page's examples) or, ``spread=False``, the first ``n`` (the
    typographic lab's picker)."""
    step = 1
    if spread:
        total = int(session.scalar(select(func.count()).select_from(Image)) or 0)
        if not total:
            return []
        step = max(1, total // n)
    rows = session.execute(
        select(Image.id, Image.caption, Image.key, Image.meta, Blob.sha256, Blob.mime)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .order_by(Image.position, Image.id)
        .limit(step * n)
    ).all()
    return [ExampleImage(r.id, r.caption or r.key, r.key, r.meta, r.sha256, r.mime) for r in rows[::step][:n]]


def example_bytes(session: Session, image_id: int) -> bytes | None:
    """The thumbnail bytes of dataset image ``image_id`` (``None`` when there is none)."""
    data = session.scalar(
        select(Blob.data).join(Image, Image.thumb_sha256 == Blob.sha256).where(Image.id == image_id)
    )
    return bytes(data) if data is not None else None


# ------------------------------------------------------- reads in their own session (pages)


def read(sessions: Callable[[], Any], query: Callable[..., T], *args: Any) -> T:
    """``query(session, *args)`` in a read session of ``sessions`` (blocking: a worker thread)."""
    with sessions() as session:
        return query(session, *args)


def layers_unit_summaries(session: Session, layer_ids: Iterable[int]) -> dict[int, dict[int, UnitSummary]]:
    """``layer id → unit → UnitSummary`` of every indexed unit of each layer
    (:func:`app.db.units.unit_summaries`, the one summary of a unit)."""
    return {layer_id: unit_summaries(session, layer_id) for layer_id in layer_ids}
