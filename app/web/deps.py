"""FastAPI dependencies shared by the views."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session


def get_session(request: Request) -> Iterator[Session]:
    """A read-only session for one request."""
    with request.app.state.sessions() as session:
        yield session


#: Annotated dependency for a read-only session: ``def view(session: ReadSession)``.
ReadSession = Annotated[Session, Depends(get_session)]


#: Query parameters that name a row by id: ASCII digits, at most 18 (below 2^63), else 404.
ID_PARAMS = ("image", "example")
#: Query parameters that count something: an integer literal longer than 9 digits is a 422.
COUNT_PARAMS = ("page", "per_page", "n", "n_terms", "top_k", "unit")


def query_int_problem(query_string: str) -> tuple[int, str] | None:
    """``(status, message)`` for the first bad integer parameter of a query string, or None."""
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        if key in ID_PARAMS and value != "":
            if not (value.isascii() and value.isdigit() and len(value) <= 18):
                return 404, f"{value[:40]!r} is not an id ({key} must be a number 0, 1, 2, ...)."
        elif key in COUNT_PARAMS:
            digits = value.strip().lstrip("+-")
            if digits.isascii() and digits.isdigit() and len(digits.lstrip("0")) > 9:
                return 422, f"{key}={value[:40]} is out of range."
    return None


def strict_query_ints(request: Request) -> None:
    """App-wide dependency: integer query parameters no view could use are rejected before any
    view parses them (``image=²`` or ``image=99999999999999999999`` → 404; ``page=10**20`` → 422;
    views clamp the rest, and SQLite never binds an overflowing integer)."""
    problem = query_int_problem(request.url.query)
    if problem is not None:
        raise HTTPException(status_code=problem[0], detail=problem[1])
