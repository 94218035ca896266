"""Helpers for the live-endpoint tests: a real uvicorn server in a thread, and image files.

The server runs the real app (``create_app`` + a :class:`LiveRunner` around the session's demo
model) on a free loopback port, so uploads go through real HTTP parsing (chunked bodies,
``Content-Length``, multipart) exactly as in production.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import uvicorn
from PIL import Image

from app.config import Settings
from app.live.runner import LiveRunner
from app.web.app import create_app


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def thread_server(app: Any, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_runner(loaded: Any, slug: str, **overrides: Any) -> LiveRunner:
    """A runner around an already loaded model (no warm-up: tests are short)."""
    options = {"max_batch": 8, "max_wait_ms": 5.0, "queue_size": 64, "timeout_s": 60.0, "warmup": False}
    options.update(overrides)
    return LiveRunner(loaded=loaded, slug=slug, device="cpu", strict=True, **options)


@contextmanager
def live_server(
    db_url: str,
    loaded: Any,
    slug: str = "demo",
    *,
    runner_options: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[tuple[str, LiveRunner, Any]]:
    """The app on ``db_url`` with a live runner, served on loopback: (base URL, runner, app)."""
    runner = make_runner(loaded, slug, **(runner_options or {}))
    app = create_app(Settings(db_url=db_url, device="cpu").with_(**settings), live_runner=runner)
    with thread_server(app) as base:
        yield base, runner, app


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient_rgb(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth colour gradient (distinct rows and columns: orientation is testable)."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, 255 - x], axis=2).round().astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def copy_db(source: Any, folder: Any) -> str:
    """Copy an SQLite fixture DB (with its WAL files) into ``folder``; return the copy's URL."""
    import shutil
    from pathlib import Path

    src = Path(source)
    dest = Path(folder) / src.name
    for suffix in ("", "-wal", "-shm"):
        if Path(str(src) + suffix).exists():
            shutil.copyfile(str(src) + suffix, str(dest) + suffix)
    return f"sqlite:///{dest}"
