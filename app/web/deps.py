"""FastAPI dependencies shared by the views."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.web.urls import Urls


def get_session(request: Request) -> Iterator[Session]:
    """A read-only session for one request."""
    with request.app.state.sessions() as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """A session that may write only the web's own tables (analyses, blobs)."""
    with request.app.state.write_sessions() as session:
        yield session


def get_urls(request: Request) -> Urls:
    return request.app.state.urls


#: Annotated dependency for a read-only session: ``def view(session: ReadSession)``.
ReadSession = Annotated[Session, Depends(get_session)]
#: Annotated dependency for a session that may write the web's own tables.
WriteSession = Annotated[Session, Depends(get_write_session)]
