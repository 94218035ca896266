"""The web app: FastAPI + Jinja2 + htmx. Build it with :func:`app.web.app.create_app`."""
