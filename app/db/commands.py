"""``conceptscope db …``: schema migrations and copying an index between databases.

* ``db upgrade [--db URL] [--revision REV]`` — migrate to the newest schema (Alembic).
* ``db current [--db URL]`` — the database's revision and the newest one; exit 1 if behind.
* ``db copy --from SOURCE --to TARGET`` — copy an index (e.g. SQLite → PostgreSQL).

``--db`` defaults to ``CONCEPTSCOPE_DB`` (else ``data/demo.db``); a path means an SQLite file.
"""

from __future__ import annotations

import argparse
import os
import sys

from app.config import Settings, db_url_from_arg


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="database file or SQLAlchemy URL (default: $CONCEPTSCOPE_DB, else data/demo.db)")


def _url(value: str | None) -> str:
    return db_url_from_arg(value) if value else Settings.from_env().db_url


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def add_upgrade_arguments(parser: argparse.ArgumentParser) -> None:
    _db_argument(parser)
    parser.add_argument("--revision", default="head", help="target revision (default: %(default)s)")


def run_upgrade(args: argparse.Namespace) -> int:
    from app.db.migrations import UnknownRevision, upgrade

    url = _url(args.db)
    try:
        before, after = upgrade(url, args.revision)
    except UnknownRevision as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"{_safe(url)}: already at revision {after}")
    else:
        print(f"{_safe(url)}: upgraded from {before or 'an empty database'} to {after}")
    return 0


def add_current_arguments(parser: argparse.ArgumentParser) -> None:
    _db_argument(parser)


def run_current(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine, pool

    from app.db.migrations import current_revision, head_revision

    url = _url(args.db)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
    finally:
        engine.dispose()
    head = head_revision()
    print(f"{_safe(url)}: revision {revision or 'none'} (newest: {head})")
    return 0 if revision == head else 1


def add_copy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, help="source database file or URL")
    parser.add_argument("--to", dest="target", required=True,
                        help="empty target: URL (postgresql+psycopg://user:pass@host/db) or file")
    parser.add_argument("--batch-rows", type=int, default=1000, help="rows per insert batch")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run_copy(args: argparse.Namespace) -> int:
    from app.db.copy import CopyError, copy_index, print_progress

    source, target = db_url_from_arg(args.source), db_url_from_arg(args.target)
    if source.startswith("sqlite:///") and not os.path.exists(source.removeprefix("sqlite:///")):
        print(f"conceptscope: error: no database at {args.source}", file=sys.stderr)
        return 2
    if args.batch_rows < 1:
        print("conceptscope: error: --batch-rows must be at least 1", file=sys.stderr)
        return 2
    print(f"copying {_safe(source)} -> {_safe(target)}", file=sys.stderr)
    try:
        report = copy_index(source, target, batch_rows=args.batch_rows,
                            progress=None if args.quiet else print_progress())  # fmt: skip
    except CopyError as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 1
    print(f"copied {report.total_rows} rows in {len(report.rows)} tables "
          f"({report.blob_bytes / 1e6:.1f} MB binary) in {report.seconds:.1f}s")  # fmt: skip
    return 0
