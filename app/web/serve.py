"""``conceptscope serve``: serve an index database in the browser (uvicorn)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import Any

from app.config import Settings, db_url_from_arg

log = logging.getLogger("conceptscope.web")

LIVE_RUNNER_MODULE = "app.live.runner"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="index database: a file path or an SQLAlchemy URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--device", default=None, help="live model device: cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument("--no-live", action="store_true", help="do not load a live model (browse only)")
    parser.add_argument("--no-store", action="store_true", help="do not store live analyses")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes sharing the index (default: %(default)s; each "
                             "loads its own live model unless --no-live)")  # fmt: skip
    parser.add_argument("--cors", action="store_true",
                        help="send Access-Control-Allow-Origin: * on JSON answers (off by default)")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="PER_MINUTE",
                        help="requests per minute per client address (token bucket; loopback exempt; "
                             "default: CONCEPTSCOPE_RATE_LIMIT or off)")
    parser.add_argument("--trusted-hosts", default=None, metavar="HOSTS",
                        help="comma-separated Host names to answer (.example.org: with subdomains; "
                             "*: any); default: localhost, 127.0.0.1, ::1 and --host")


def build_live_runner(settings: Settings) -> Any:
    """``app.live.runner.LiveRunner.from_settings(settings)``, or ``None`` (disabled or unavailable).

    The runner loads its model when the app starts (``start()``), not here.
    """
    if not settings.load_live_model or importlib.util.find_spec(LIVE_RUNNER_MODULE) is None:
        return None
    module = importlib.import_module(LIVE_RUNNER_MODULE)
    build = getattr(module, "build_runner", None) or module.LiveRunner.from_settings
    try:
        return build(settings)
    except Exception as exc:  # e.g. the DB names a model this machine cannot build
        print(f"conceptscope serve: live model disabled: {exc}", file=sys.stderr)
        return None


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env().with_(db_url=db_url_from_arg(args.db), device=args.device)
    if getattr(args, "no_live", False):
        settings = settings.with_(load_live_model=False)
    if getattr(args, "no_store", False):
        settings = settings.with_(store_analyses=False)
    if getattr(args, "cors", False):
        settings = settings.with_(cors=True)
    if getattr(args, "rate_limit", None) is not None:
        settings = settings.with_(rate_limit_per_minute=args.rate_limit)
    from app.web.security import default_trusted_hosts, parse_trusted_hosts

    hosts = parse_trusted_hosts(getattr(args, "trusted_hosts", None) or "")
    settings = settings.with_(trusted_hosts=hosts or settings.trusted_hosts
                              or default_trusted_hosts(getattr(args, "host", None)))
    return settings


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.web.app import create_app

    settings = settings_from_args(args)
    workers = getattr(args, "workers", 1) or 1
    if workers < 1 or workers > MAX_WORKERS:
        print(f"conceptscope serve: error: --workers must be 1..{MAX_WORKERS}", file=sys.stderr)
        return 2
    if workers > 1:
        return _run_workers(args, settings, workers)
    try:
        app = create_app(settings, live_runner=build_live_runner(settings), freeze_gc=True)
    except FileNotFoundError as exc:
        print(f"conceptscope serve: error: {exc}", file=sys.stderr)
        return 2
    print(f"Conceptscope: serving {settings.db_url} on http://{args.host}:{args.port}", flush=True)
    from app.web.uploads import tune_malloc

    tune_malloc()  # before uvicorn starts its threads: freed upload buffers go back to the system
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=True)
    return 0


MAX_WORKERS = 64
WORKER_ARGS_ENV = "CONCEPTSCOPE_SERVE_ARGS"
WORKER_HEALTHCHECK_S = 120


def _run_workers(args: argparse.Namespace, settings: Settings, workers: int) -> int:
    """``uvicorn --workers N``: each worker process builds its own app (:func:`worker_app`) over
    the same index (SQLite opened read-only by every worker, or PostgreSQL)."""
    import json
    import os

    import uvicorn

    from app.web.app import sqlite_path

    path = sqlite_path(settings.db_url)
    if path is not None and not path.exists():
        print(f"conceptscope serve: error: no index database at {path}", file=sys.stderr)
        return 2
    plain = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None))}
    os.environ[WORKER_ARGS_ENV] = json.dumps(plain)
    print(f"Conceptscope: serving {settings.db_url} on http://{args.host}:{args.port} "
          f"with {workers} worker processes", flush=True)  # fmt: skip
    # a spawned worker answers uvicorn's health pings only once it has re-imported this package: give
    # it time on a busy machine (the default 5 s restarted workers in a loop under load)
    uvicorn.run("app.web.serve:worker_app", factory=True, workers=workers, host=args.host, port=args.port,
                log_level=args.log_level, proxy_headers=True,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)  # fmt: skip
    return 0


def worker_app() -> Any:
    """The app of one worker process (uvicorn factory), from the arguments ``serve`` was given."""
    import json
    import os

    from app.web.app import create_app

    args = argparse.Namespace(**json.loads(os.environ[WORKER_ARGS_ENV]))
    settings = settings_from_args(args)
    return create_app(settings, live_runner=build_live_runner(settings), freeze_gc=True)
