"""``python -m app.db.migrations revision -m MESSAGE``: autogenerate the next revision.

Upgrades a scratch SQLite database to the current head, compares it with the models and writes
``versions/NNNN_<slug>.py``. Review the file; use :mod:`app.db.migrations.guarded` for added
tables, columns and indexes (databases made before migrations may already have them).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from app.db.migrations import alembic_config, head_revision


def _guard(source: str) -> str:
    """Use :mod:`guarded` operations for what ``upgrade()`` adds (tables, columns, indexes)."""
    head, sep, tail = source.partition("def downgrade")
    head = head.replace("op.create_table(", "guarded.create_table(")
    head = head.replace("op.create_index(", "guarded.create_index(")
    head = head.replace("op.add_column(", "guarded.add_column(")
    head = head.replace(
        "from alembic import op\n", "from alembic import op\n\nfrom app.db.migrations import guarded\n", 1
    )
    return "# ruff: noqa: E501\n" + head + sep + tail


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m app.db.migrations")
    sub = parser.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("revision", help="autogenerate the next revision")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    next_id = f"{int(head_revision()) + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        with engine.begin() as conn:
            config = alembic_config(connection=conn)
            command.upgrade(config, "head")
            config.attributes["render_as_batch"] = False
            script = command.revision(config, message=args.message, autogenerate=True, rev_id=next_id)
        engine.dispose()
    path = Path(script.path)  # type: ignore[union-attr]
    slug = re.sub(r"[^a-z0-9]+", "_", args.message.lower()).strip("_")[:40]
    final = path.with_name(f"{next_id}_{slug}.py")
    source = path.read_text()
    path.unlink()
    final.write_text(_guard(source))
    print(final)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
