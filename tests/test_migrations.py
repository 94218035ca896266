"""Alembic migrations: the models and the migrations agree, old databases upgrade to head.

Run on SQLite and, with the ``pg_url`` fixture, on a real PostgreSQL server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, insert, inspect, pool, select, text

from app.cli import main
from app.db import make_engine
from app.db.migrations import (
    FIRST_REVISION,
    FIRST_TABLES,
    UnknownRevision,
    alembic_config,
    current_revision,
    head_revision,
    schema_diff,
)
from app.db.schema import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: an SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("pg_url")


def _engine(url: str):
    return create_engine(url, poolclass=pool.NullPool)


def _revision(url: str) -> str | None:
    engine = _engine(url)
    with engine.connect() as conn:
        revision = current_revision(conn)
    engine.dispose()
    return revision


def _diff(url: str) -> list:
    engine = _engine(url)
    with engine.connect() as conn:
        diff = schema_diff(conn)
    engine.dispose()
    return diff


def _upgrade_to(url: str, revision: str) -> None:
    engine = _engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), revision)
    engine.dispose()


def _first_schema_rows(url: str) -> None:
    """A model, a layer, a blob and an image, as the first schema stores them."""
    engine = _engine(url)
    meta = MetaData()
    meta.reflect(engine)
    rows = {
        "models": {"id": 1, "slug": "demo", "name": "demo", "pretrained": None, "embed_dim": 64,
                   "image_size": 64, "config": {"a": 1}},
        "layers": {"id": 1, "model_id": 1, "name": "layer4", "hook": "h", "kind": "conv", "position": 0,
                   "n_units": 2, "grid_h": 2, "grid_w": 2, "is_last": True},
        "blobs": {"sha256": "ab" * 32, "mime": "image/png", "data": b"\x89PNG", "width": 1, "height": 1},
        "images": {"id": 7, "dataset": "demo:1", "key": "0", "position": 0, "caption": "a red circle",
                   "meta": {}, "thumb_sha256": "ab" * 32, "width": 1, "height": 1},
    }  # fmt: skip
    with engine.begin() as conn:
        for table, row in rows.items():
            conn.execute(insert(meta.tables[table]), [row])
    engine.dispose()


def _rows_survived(url: str) -> None:
    engine = _engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT slug FROM models")).scalars().all() == ["demo"]
        assert conn.execute(text("SELECT caption FROM images WHERE id = 7")).scalar() == "a red circle"
        assert bytes(conn.execute(text("SELECT data FROM blobs")).scalar()) == b"\x89PNG"
    engine.dispose()


def test_one_head_and_numbered_revisions() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [head_revision()], "migrations branched: merge the heads"
    revisions = [rev.revision for rev in script.walk_revisions("base", "heads")][::-1]
    assert revisions[0] == FIRST_REVISION
    assert revisions == [f"{i:04d}" for i in range(1, len(revisions) + 1)]


def test_models_and_migrations_agree(db_url: str) -> None:
    """Upgrading an empty database through every revision gives exactly the models' schema."""
    _upgrade_to(db_url, "head")
    assert _revision(db_url) == head_revision()
    assert _diff(db_url) == [], "schema.py changed without a migration: python -m app.db.migrations revision"


def test_first_schema_upgrades_to_head_keeping_rows(db_url: str) -> None:
    _upgrade_to(db_url, FIRST_REVISION)
    assert set(inspect(_engine(db_url)).get_table_names()) == {*FIRST_TABLES, "alembic_version"}
    _first_schema_rows(db_url)
    assert main(["db", "current", "--db", db_url]) == (0 if head_revision() == FIRST_REVISION else 1)
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert _revision(db_url) == head_revision()
    assert _diff(db_url) == []
    _rows_survived(db_url)
    assert main(["db", "current", "--db", db_url]) == 0


def test_database_made_before_migrations_is_adopted(db_url: str) -> None:
    """An unstamped database with the first schema's tables (made by ``create_all`` back then)."""
    _upgrade_to(db_url, FIRST_REVISION)
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    _first_schema_rows(db_url)
    make_engine(db_url).dispose()  # a writer connecting adopts and upgrades it
    assert _revision(db_url) == head_revision()
    assert _diff(db_url) == []
    _rows_survived(db_url)


def test_fresh_database_is_created_at_head_and_upgrade_is_a_no_op(db_url: str, capsys) -> None:
    make_engine(db_url).dispose()
    assert _revision(db_url) == head_revision()
    assert _diff(db_url) == []
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert f"already at revision {head_revision()}" in capsys.readouterr().out


def test_unstamped_head_schema_is_adopted_without_errors(tmp_path: Path) -> None:
    """Made by ``create_all`` with today's models but never stamped: later revisions skip what exists."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    engine = _engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert main(["db", "upgrade", "--db", url]) == 0
    assert _revision(url) == head_revision()
    assert _diff(url) == []


def test_downgrade_to_first_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    _upgrade_to(url, "head")
    _first_schema_rows(url)
    engine = _engine(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), FIRST_REVISION)
    assert set(inspect(engine).get_table_names()) == {*FIRST_TABLES, "alembic_version"}
    engine.dispose()
    _rows_survived(url)
    assert main(["db", "upgrade", "--db", url]) == 0
    assert _diff(url) == []
    _rows_survived(url)


def test_upgrade_creates_an_empty_database_and_current_reports(tmp_path: Path, capsys) -> None:
    path = tmp_path / "new.db"
    assert main(["db", "current", "--db", str(path)]) == 1
    assert "revision none" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", str(path)]) == 0
    assert f"to {head_revision()}" in capsys.readouterr().out
    engine = _engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.scalar(select(text("count(*)")).select_from(text("models"))) == 0
    engine.dispose()


@pytest.mark.slow
def test_processes_creating_one_fresh_database_together(db_url: str) -> None:
    """torchrun ranks start together: each connects a writer; one schema, stamped once."""
    import subprocess
    import sys

    code = "import sys; from app.db import make_engine; make_engine(sys.argv[1]).dispose()"
    repo = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-c", code, db_url]
    procs = [subprocess.Popen(argv, cwd=repo, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    engine = _engine(db_url)
    with engine.connect() as conn:
        stamps = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert stamps == [head_revision()]
    engine.dispose()
    assert _diff(db_url) == []


def test_copy_needs_a_current_source_and_copies_rows(tmp_path: Path, capsys) -> None:
    """``db copy`` refuses a source behind the newest revision; after ``db upgrade`` it copies."""
    source = f"sqlite:///{tmp_path / 'old.db'}"
    _upgrade_to(source, FIRST_REVISION)
    _first_schema_rows(source)
    target = tmp_path / "new.db"
    assert main(["db", "copy", "--from", source, "--to", str(target), "--quiet"]) == 1
    assert "db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--db", source]) == 0
    assert main(["db", "copy", "--from", source, "--to", str(target)]) == 0
    out = capsys.readouterr()
    assert "copied 4 rows" in out.out and "images: 1 rows" in out.err
    _rows_survived(f"sqlite:///{target}")
    assert _revision(f"sqlite:///{target}") == head_revision()
    assert main(["db", "copy", "--from", source, "--to", str(target)]) == 1  # not empty now
    assert "not empty" in capsys.readouterr().err


def test_a_database_from_a_newer_conceptscope_is_refused_clearly(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    make_engine(url).dispose()
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    assert main(["db", "upgrade", "--db", url]) == 1
    assert "9999 is newer than this conceptscope" in capsys.readouterr().err
    with pytest.raises(UnknownRevision):
        make_engine(url)
