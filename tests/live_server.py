"""A real ``conceptscope serve`` subprocess on a free loopback port (for e2e and browser tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(db_path: Path, *extra: str, timeout_s: float = 90.0) -> Iterator[str]:
    """Run ``python -m app.cli serve --db DB --port P --no-live``; yield its base URL."""
    port = free_port()
    args = ["serve", "--db", str(db_path), "--host", "127.0.0.1", "--port", str(port), "--no-live",
            "--log-level", "warning", *extra]  # fmt: skip
    with server_process(args, port, timeout_s=timeout_s) as (base, _):
        yield base


@contextmanager
def server_process(
    args: list[str], port: int, *, env: dict[str, str] | None = None, timeout_s: float = 90.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python -m app.cli ARGS`` (a command that serves on ``port``) until ``/-/health``
    answers; yield its base URL and process."""
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "app.cli", *args]
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{base}/-/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not answer /-/health within {timeout_s}s")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
