"""The web app: FastAPI + Jinja2 + htmx over one index database.

Build it with :func:`app.web.app.create_app`; serve it with ``conceptscope serve``
(:mod:`app.web.serve`).

Adding a page type
    Write ``app/web/views/<name>.py`` with ``router = APIRouter()`` and add its module name to
    ``VIEW_MODULES`` in :mod:`app.web.views` (one line; a ``NAV`` entry appears once its path is
    served). Build links with ``request.app.state.urls`` (:class:`app.web.urls.Urls`, the one URL
    builder). Register the page and its ``.json`` twin with :func:`app.web.routing.page` (the
    endpoint gets ``fmt``). Make one plain ``data`` dict and return
    :func:`app.web.formats.respond`, which serves it as JSON for the twin (``fmt="json"``) or renders
    your template (extending ``base.html``) with ``data``, the ``Link`` header and, for htmx
    requests, a fragment template plus ``Vary: HX-Request``. Raise
    :class:`app.web.errors.NotFound` (or any ``HTTPException``) for bad input: the error pages
    answer in HTML or JSON. Read the DB with the ``ReadSession`` dependency
    (:mod:`app.web.deps`). Only the web's own tables may be written, always through :mod:`app.db`
    functions on the app's write engine and session factory (``app.state.write_engine`` /
    ``write_sessions``, made by :func:`app.web.app.open_database`): analyses and their blobs by
    the app's :class:`app.db.analyses.AnalysisWriter` (:func:`app.web.analyses.writer`), on-demand
    feature visualizations by :func:`app.live.jobs.claim_and_start` (:mod:`app.db.featurevis_jobs`).

Adding a section to the neuron page
    See :mod:`app.web.sections`: a module ``app/web/sections/<name>.py`` with ``load(ctx)`` and a
    partial ``templates/_partials/neuron_<name>.html``, listed once in ``SECTIONS``.
"""
