"""Alembic environment: the models' metadata, and the connection or URL that
:func:`app.db.migrations.alembic_config` put into the config (no ``alembic.ini`` needed)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from app.db.schema import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **kwargs)


def run_offline() -> None:
    """``--sql``: print the DDL instead of running it."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
               render_as_batch=config.get_main_option("sqlalchemy.url", "").startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place: batch mode copies the table instead (the revision
    # generator turns it off: adding tables, columns and indexes needs no batch)
    batch = config.attributes.get("render_as_batch", connection.dialect.name == "sqlite")
    _configure(connection=connection, render_as_batch=batch)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
