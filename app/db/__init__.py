"""Database access: engine/session factory, schema, blobs and array helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.schema import Blob


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and foreign keys.

    ``create``: make the schema current (:func:`app.db.migrations.ensure_schema`): a fresh
    database gets every table and is stamped at the newest migration; an older one is upgraded.
    """
    if url.startswith("sqlite:///") and create:
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        from app.db.migrations import ensure_schema  # imports Alembic: only for writers

        ensure_schema(engine)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(
    session: Session, data: bytes, mime: str, width: int | None = None, height: int | None = None
) -> str:
    """Store ``data`` once under its SHA-256 (idempotent); return the hash."""
    digest = sha256_hex(data)
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, mime=mime, data=data, width=width, height=height))
    return digest


def get_blob(session: Session, digest: str) -> Blob | None:
    return session.scalar(select(Blob).where(Blob.sha256 == digest))


MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def to_bytes(array: np.ndarray, dtype: str) -> bytes:
    """Array → little-endian bytes of ``dtype`` (shape is stored by the caller)."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def from_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes written by :func:`to_bytes` → float32 array of ``shape``."""
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(
        np.float32
    )
