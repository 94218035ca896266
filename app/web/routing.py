"""One way to register a page and its ``.json`` twin.

``@page(router, "/analyses/{the_id}")`` on ``def view(..., fmt: str | None)`` registers
``/analyses/{the_id}.json`` (``fmt="json"``) and ``/analyses/{the_id}`` (``fmt=None``) with the
same endpoint, so the two can never drift apart; ``fmt`` is not a query parameter. The ``.json``
route is registered first, so a path parameter never swallows the suffix. Route options (e.g.
``include_in_schema``, ``summary``) apply to both; the twin's OpenAPI summary defaults to the
page's with `` (JSON)`` (its response schema comes from :mod:`app.web.schemas` by path, see
:mod:`app.web.openapi`). ``tests/test_layering.py`` checks that no view registers a ``.json``
route by hand.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter


def page(
    router: APIRouter, path: str, *, methods: Sequence[str] = ("GET",), **route_options: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``path`` and ``path + ".json"`` for ``methods``."""

    def decorate(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(endpoint, eval_str=True)
        params = [p for p in signature.parameters.values() if p.name != "fmt"]

        def bound(fmt: str | None) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(endpoint):

                async def route(*args: Any, **kwargs: Any) -> Any:
                    return await endpoint(*args, fmt=fmt, **kwargs)
            else:

                def route(*args: Any, **kwargs: Any) -> Any:
                    return endpoint(*args, fmt=fmt, **kwargs)

            functools.update_wrapper(route, endpoint)
            del route.__wrapped__  # FastAPI must read the signature below, not the endpoint's
            route.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
            route.__name__ = endpoint.__name__ + ("_json" if fmt else "")
            return route

        twin = {"summary": endpoint.__name__.replace("_", " ").title() + " (JSON)", **route_options}
        router.add_api_route(path + ".json", bound("json"), methods=list(methods), **twin)
        router.add_api_route(path, bound(None), methods=list(methods), **route_options)
        return endpoint

    return decorate
