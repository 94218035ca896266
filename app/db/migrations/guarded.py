"""Idempotent migration operations for revisions after the first.

A database made before migrations existed (by ``create_all`` at some later schema) is stamped at
the first revision and upgraded; it may already hold some of what later revisions add, so they
add tables, columns and indexes only where missing. On a database that Alembic made, they
behave exactly like ``op.create_table`` / ``op.add_column`` / ``op.create_index``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def create_table(name: str, *elements: Any, **kwargs: Any) -> None:
    if not _inspector().has_table(name):
        op.create_table(name, *elements, **kwargs)


def add_column(table: str, column: sa.Column) -> None:
    if column.name not in {c["name"] for c in _inspector().get_columns(table)}:
        op.add_column(table, column)


def create_index(name: str, table: str, columns: list[str], **kwargs: Any) -> None:
    if name not in {i["name"] for i in _inspector().get_indexes(table)}:
        op.create_index(name, table, columns, **kwargs)
