"""The page modules. Each exposes ``router`` (a FastAPI ``APIRouter``).

To add a page type: write ``app/web/views/<name>.py`` with a ``router`` and add one line to
``VIEW_MODULES``. Nav entries in ``NAV`` show up once a route serves their path.
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter

VIEW_MODULES: list[str] = [
    "app.web.views.meta",
    "app.web.views.static",
    "app.web.views.robots",  # robots.txt (issue 14)
    "app.web.views.blobs",
    "app.web.views.home",
    "app.web.views.model",
    "app.web.views.layer",
    "app.web.views.neuron",
    "app.web.views.featurevis",  # on-demand feature visualization fragment (issue 5)
    "app.web.views.analyze",  # live endpoint (issue 4)
    "app.web.views.search",  # live endpoint (issue 4)
    "app.web.views.typographic",  # typographic attack lab (issue 6)
    "app.web.views.atlas",  # neuron atlas (issue 6)
    "app.web.views.multimodal",  # multimodal neurons view (issue 6)
    "app.web.views.exports",  # bulk downloads (issue 18)
    "app.web.views.lists",  # lists and comparisons of units (issue 18)
    "app.web.views.embed",  # link previews, /embed/ cards, oEmbed (issue 18)
]

#: (label, path) of the header's navigation.
NAV: list[tuple[str, str]] = [
    ("Models", "/"),
    ("Search", "/search"),
    ("Analyze an image", "/analyze"),
    ("Typographic lab", "/typographic"),
]


def routers() -> list[APIRouter]:
    return [importlib.import_module(name).router for name in VIEW_MODULES]


def route_paths(routers: list[APIRouter]) -> frozenset[str]:
    """The path templates ``routers`` serve, e.g. ``/models/{model}/layers/{layer}/atlas``."""
    return frozenset(str(getattr(route, "path", "")) for router in routers for route in router.routes)


def nav_items(routers: list[APIRouter]) -> list[tuple[str, str]]:
    """The ``NAV`` entries whose path one of ``routers`` serves."""
    paths = route_paths(routers)
    return [(label, path) for label, path in NAV if path in paths]
