"""The health check's read: is the database readable, and which models does it serve."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.db import queries


def served_models(session: Session) -> list[str]:
    """The slugs of the indexed models, after a trivial ``SELECT 1`` (raises if the database
    cannot be read)."""
    session.execute(text("SELECT 1"))
    return [m.slug for m in queries.list_models(session)]


def served_models_with(sessions: sessionmaker[Session]) -> list[str]:
    """:func:`served_models` in a session of its own (for a caller on its own thread)."""
    with sessions() as session:
        return served_models(session)
