"""Schema migrations (Alembic), configured in code: no ``alembic.ini`` is needed.

* :func:`upgrade` — bring a database to a revision (``conceptscope db upgrade``).
* :func:`ensure_schema` — what a writer (``make_engine(url)``) does on connecting: a fresh
  database gets every table (``create_all``) and is stamped at head, so ``db upgrade`` is a no-op
  on it; one at an older revision is upgraded; one made before migrations existed is adopted
  (stamped at the first revision, then upgraded; revisions after the first skip what exists).
* :func:`schema_diff` — Alembic's comparison of a database with the models (empty = agree).

Revisions live in ``versions/``; ``0001`` is the schema as it was before migrations existed.
To add one after changing :mod:`app.db.schema`::

    python -m app.db.migrations revision -m "what changed"   # autogenerate against a scratch DB
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, pool, text

from app.db.schema import Base

log = logging.getLogger("conceptscope.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent
FIRST_REVISION = "0001"
VERSION_TABLE = "alembic_version"
#: Tables of the first revision (a database with any of them predates migrations if unstamped).
FIRST_TABLES = (
    "activation_samples", "analyses", "blobs", "concept_profiles", "directions",
    "feature_visualizations", "images", "labels", "layers", "models", "neuron_words", "neurons",
    "runs", "top_examples",
)  # fmt: skip
PRE_MIGRATIONS = "a schema made before migrations"
_LOCK_KEY = 0x636F6E63  # "conc": PostgreSQL advisory lock held while the schema is set up


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for this package's migrations, on ``url`` or an open ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision in ``versions/``."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision a database is stamped at (``None``: not stamped)."""
    return MigrationContext.configure(connection).get_current_revision()


def schema_diff(connection: Connection) -> list[Any]:
    """Differences between the database and the models (Alembic autogenerate); empty = agree."""
    from alembic.autogenerate import compare_metadata

    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata)


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database at ``url`` to ``revision``; return (before, after) revisions.

    A database made before migrations existed is adopted first (see :func:`ensure_schema`);
    its ``before`` is :data:`PRE_MIGRATIONS`.
    """
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            _lock(conn)
            before = current_revision(conn)
            if before is not None:
                _check_known(before)
            if before is None and _our_tables(conn):
                _adopt(conn)
                before = PRE_MIGRATIONS
            command.upgrade(alembic_config(connection=conn), revision)
            after = current_revision(conn)
        return before, after
    finally:
        engine.dispose()


def ensure_schema(engine: Engine) -> None:
    """Make the database behind ``engine`` current: create + stamp, adopt, or upgrade."""
    with engine.begin() as conn:
        _lock(conn)
        has_version = inspect(conn).has_table(VERSION_TABLE)
        revision = current_revision(conn) if has_version else None
        if revision == head_revision():
            return
        if revision is None and not _our_tables(conn):
            Base.metadata.create_all(conn)
            command.stamp(alembic_config(connection=conn), "head")
            return
        if revision is None:
            _adopt(conn)
        else:
            _check_known(revision)
        log.info("upgrading %s from revision %s to %s", engine.url.render_as_string(),
                 current_revision(conn), head_revision())
        command.upgrade(alembic_config(connection=conn), "head")


class UnknownRevision(RuntimeError):
    """The database was migrated by a newer conceptscope than this one."""


def _check_known(revision: str) -> None:
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if revision not in known:
        raise UnknownRevision(
            f"the database's schema revision {revision} is newer than this conceptscope knows "
            f"(newest: {head_revision()}); upgrade conceptscope to use it"
        )


def _our_tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) & set(Base.metadata.tables)


def _adopt(conn: Connection) -> None:
    """A database made before migrations: complete the first revision's tables, stamp it there."""
    missing = [t for t in Base.metadata.sorted_tables if t.name in FIRST_TABLES]
    Base.metadata.create_all(conn, tables=missing, checkfirst=True)
    command.stamp(alembic_config(connection=conn), FIRST_REVISION)


def _lock(conn: Connection) -> None:
    """Serialise schema set-up between processes (e.g. torchrun ranks starting together):
    a transaction-scoped advisory lock on PostgreSQL, a write transaction on SQLite."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
