"""Copy an index between databases (``conceptscope db copy --from A --to B``).

Typically SQLite → PostgreSQL: build an index on one machine, serve it from a shared server.
Every table of the models (but :data:`SKIP_TABLES`) is copied in foreign-key order, in batches
(by rows and bytes, so blob-heavy tables never hold much in memory), in one transaction on the
target: a copy that fails leaves the target without rows. The target must hold no rows (a
non-empty target is refused, so running the same copy twice never duplicates or mixes indexes);
its schema is created and stamped at the newest migration. The source must be at the newest
migration too (``db upgrade`` it first). PostgreSQL sequences are moved past the copied ids, so
later inserts get new ids.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, func, inspect, select, text

from app.db import make_engine
from app.db.migrations import VERSION_TABLE, current_revision, head_revision, schema_diff
from app.db.schema import Base

#: Not copied: transient state of the serving process (an in-flight render claim would block the
#: target's renders of that neuron until its deadline).
SKIP_TABLES = frozenset({"featurevis_jobs"})
DEFAULT_BATCH_ROWS = 1000
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024


class CopyError(RuntimeError):
    """The copy cannot start (non-empty target, outdated source, same database)."""


@dataclass
class CopyReport:
    """Rows copied per table, total bytes of binary columns and seconds taken."""

    rows: dict[str, int] = field(default_factory=dict)
    blob_bytes: int = 0
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


Progress = Callable[[str, int, int], None]
"""``progress(table, rows_done, rows_total)`` after each batch."""


def copy_index(
    source_url: str,
    target_url: str,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every table of the index at ``source_url`` into the empty database at ``target_url``."""
    if _same_database(source_url, target_url):
        raise CopyError("source and target are the same database")
    source = make_engine(source_url, create=False)
    target = make_engine(target_url, create=True)  # schema at head (fresh) or upgraded
    try:
        with source.connect() as src:
            _check_source(src, source_url)
            tables = [t for t in Base.metadata.sorted_tables
                      if t.name not in SKIP_TABLES and inspect(src).has_table(t.name)]  # fmt: skip
            totals = {t.name: src.scalar(select(func.count()).select_from(t)) or 0 for t in tables}
            start = time.perf_counter()
            report = CopyReport()
            with target.begin() as dst:
                _check_target_empty(dst, target_url)
                for table in tables:
                    done, blob_bytes = _copy_table(src, dst, table, totals[table.name], batch_rows,
                                                   batch_bytes, progress)  # fmt: skip
                    report.rows[table.name] = done
                    report.blob_bytes += blob_bytes
                if dst.dialect.name == "postgresql":
                    _reset_sequences(dst)
            report.seconds = time.perf_counter() - start
            return report
    finally:
        source.dispose()
        target.dispose()


def _same_database(a: str, b: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(a) == make_url(b)


def _check_source(conn: Connection, url: str) -> None:
    if not inspect(conn).has_table("models"):
        raise CopyError(f"the source {url} holds no index (no models table)")
    head = head_revision()
    revision = current_revision(conn) if inspect(conn).has_table(VERSION_TABLE) else None
    if revision == head or (revision is None and not schema_diff(conn)):
        return
    raise CopyError(
        f"the source is at schema revision {revision or 'none (made before migrations)'}, this "
        f"version of conceptscope writes {head}: run `conceptscope db upgrade --db SOURCE` first"
    )


def _check_target_empty(conn: Connection, url: str) -> None:
    for table in Base.metadata.sorted_tables:
        count = conn.scalar(select(func.count()).select_from(table))
        if count:
            raise CopyError(
                f"the target {_safe(url)} is not empty ({count} rows in {table.name!r}); copy into an "
                "empty database (e.g. createdb a new one) so indexes are never mixed"
            )


def _copy_table(
    src: Connection,
    dst: Connection,
    table: Table,
    total: int,
    batch_rows: int,
    batch_bytes: int,
    progress: Progress | None,
) -> tuple[int, int]:
    columns = {c["name"] for c in inspect(src).get_columns(table.name)}
    selected = [c for c in table.columns if c.name in columns]
    order = list(table.primary_key.columns) or selected
    result = src.execution_options(stream_results=True, yield_per=batch_rows).execute(
        select(*selected).order_by(*order)
    )
    done = blob_total = 0
    batch: list[dict[str, Any]] = []
    size = 0
    for row in result:
        values = row._asdict()
        row_bytes = sum(len(v) for v in values.values() if isinstance(v, bytes | bytearray | memoryview))
        batch.append(values)
        size += row_bytes
        blob_total += row_bytes
        if len(batch) >= batch_rows or size >= batch_bytes:
            dst.execute(table.insert(), batch)
            done += len(batch)
            batch, size = [], 0
            if progress:
                progress(table.name, done, total)
    if batch:
        dst.execute(table.insert(), batch)
        done += len(batch)
    if progress:
        progress(table.name, done, total)
    return done, blob_total


def _reset_sequences(conn: Connection) -> None:
    """Move each serial id's sequence past the largest copied id."""
    for table in Base.metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None:
            continue
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                f'COALESCE(MAX("{column.name}"), 1), MAX("{column.name}") IS NOT NULL) '
                f'FROM "{table.name}"'
            ),
            {"table": table.name, "column": column.name},
        )


def _safe(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def print_progress(stream: Any = None) -> Progress:
    """A progress callback printing one line per table (and a running count on a terminal) to
    ``stream`` (default: ``sys.stderr`` at call time)."""
    stream = sys.stderr if stream is None else stream
    tty = hasattr(stream, "isatty") and stream.isatty()
    shown: dict[str, int] = {}

    def report(table: str, done: int, total: int) -> None:
        if done >= total:
            stream.write(f"\r  {table}: {done} rows\n" if tty else f"  {table}: {done} rows\n")
        elif tty:
            stream.write(f"\r  {table}: {done}/{total} rows")
        elif done * 10 // max(total, 1) > shown.get(table, 0):  # a line per tenth in a log
            shown[table] = done * 10 // max(total, 1)
            stream.write(f"  {table}: {done}/{total} rows\n")
        stream.flush()

    return report

