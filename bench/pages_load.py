"""Page load: each page alone, then 32 concurrent clients, against a static file of the same server.

Serves an index with ``conceptscope serve`` (a uvicorn subprocess on 127.0.0.1) and measures, in
one run and with one loopback client (raw HTTP/1.1 keep-alive over asyncio streams, so the client
costs little):

1. each page alone: a warm-up, then ``--sequential`` (100) requests one after another; p50/p99;
2. each page under ``--clients`` (32) concurrent keep-alive clients for ``--seconds``; requests/s,
   p50/p99;

for the home, model, layer, neuron (HTML and JSON), multimodal and search pages and a static file
served by the same server. Also, informational: a neuron page of a different unit on every request
(each one a cache miss: the page's own work, not the cache). With ``--compare-uncached`` the alone
phase is repeated on a second server with the page cache off (``CONCEPTSCOPE_PAGE_CACHE_MB=0``).
With ``--wrk`` (and Debian's ``wrk`` installed) the neuron page and the static file are
cross-checked with wrk (2 threads, 32 connections).

The last line is ``share of static ceiling: X``: the slowest page's requests/s under 32 clients
over the static file's. Goals: neuron page alone p50 <= 10 ms; X >= 0.5; every page's p99 <= 2x
the static file's p99.

    .venv/bin/python bench/pages_load.py [--db data/demo.db] [--workers 1] [--wrk] [--compare-uncached]

Without ``--db`` (or when it does not exist) the demo index is built first
(``conceptscope demo --no-serve``, minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


# -- a tiny HTTP/1.1 keep-alive client ----------------------------------------------------------


class Conn:
    """One keep-alive connection to ``HOST:port`` (GET only; Content-Length bodies)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{extra}\r\n".encode())
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        pairs = (line.partition(":") for line in lines[1:] if line)
        fields = {k.strip().lower(): v.strip() for k, _, v in pairs}
        if "content-length" in fields:
            body = await self.reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding") == "chunked":
            body = await self._chunked()
        else:
            body = b""
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def sequential(port: int, paths: list[str], warmup: int) -> list[float]:
    """Latency (s) of each request to ``paths`` in turn, after ``warmup`` requests to ``paths[0]``."""
    conn = Conn(port)
    for _ in range(warmup):
        status, _ = await conn.get(paths[0])
        if status != 200:
            raise RuntimeError(f"{paths[0]}: HTTP {status}")
    times = []
    for path in paths:
        t0 = time.perf_counter()
        status, _ = await conn.get(path)
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
    await conn.close()
    return times


async def concurrent(port: int, path: str, clients: int, seconds: float) -> tuple[float, list[float], int]:
    """(requests/s, latencies, errors) of ``clients`` keep-alive clients hitting ``path``."""
    times: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        conn = Conn(port)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.get(path), 30)
            except Exception:
                errors += 1
                await conn.close()
                conn = Conn(port)
                continue
            times.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return len(times) / elapsed, times, errors


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


# -- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(db: str, *, workers: int = 1, live: bool = True, env: dict[str, str] | None = None,
           timeout_s: float = 180.0, repo: Path = REPO) -> Iterator[int]:  # fmt: skip
    """``conceptscope serve --db DB`` on a free port until ``/-/health`` answers; yields the port."""
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "serve", "--db", db, "--host", HOST, "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]
    if not live:
        args.append("--no-live")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(args, cwd=repo, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    pass
                status, _ = asyncio.run(Conn(port).get("/-/health"))
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(port: int, path: str) -> dict:
    status, body = asyncio.run(Conn(port).get(path))
    if status != 200:
        raise RuntimeError(f"{path}: HTTP {status}")
    return json.loads(body)


def discover_pages(port: int, query: str) -> dict[str, str]:
    """Page name → path on the served index (the first model, its last layer, a strong unit)."""
    home = get_json(port, "/.json")
    models = home.get("models") or []
    slug = models[0]["slug"]
    model = get_json(port, f"/models/{slug}.json")
    layers = model["layers"]
    layer = next((x for x in layers if x.get("is_last")), layers[-1])["name"]
    listing = get_json(port, f"/models/{slug}/layers/{layer}.json?sort=max")
    rows = listing.get("neurons") or listing.get("rows") or []
    unit = rows[0]["unit"] if rows else 0
    status, html = asyncio.run(Conn(port).get("/"))
    found = re.search(rb'/static/[0-9a-f]+/[^"\' ]+\.css', html)
    if not found:
        raise RuntimeError("no static stylesheet linked from the home page")
    neuron = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    return {
        "home": "/",
        "model": f"/models/{slug}",
        "layer": f"/models/{slug}/layers/{layer}",
        "neuron": neuron,
        "neuron.json": neuron + ".json",
        "multimodal": f"/models/{slug}/multimodal",
        "search": f"/search?q={query}&model={slug}",
        "static": found.group(0).decode(),
        "_slug": slug,
        "_layer": layer,
        "_units": str(model_units(layers, layer)),
    }


def model_units(layers: list[dict], name: str) -> int:
    layer = next(x for x in layers if x["name"] == name)
    return int(layer.get("n_units") or layer.get("units") or 0)


def distinct_neurons(pages: dict[str, str], n: int) -> list[str]:
    units = max(1, int(pages["_units"]))
    return [f"/models/{pages['_slug']}/layers/{pages['_layer']}/neurons/{(7 + 37 * i) % units}"
            for i in range(min(n, units))]  # fmt: skip


def measure_alone(port: int, pages: dict[str, str], n: int, warmup: int) -> dict[str, list[float]]:
    return {name: asyncio.run(sequential(port, [path] * n, warmup))
            for name, path in pages.items() if not name.startswith("_")}  # fmt: skip


def measure_concurrent(port: int, pages: dict[str, str], clients: int, seconds: float) -> dict:
    out = {}
    for name, path in pages.items():
        if name.startswith("_"):
            continue
        asyncio.run(sequential(port, [path], 3))
        out[name] = asyncio.run(concurrent(port, path, clients, seconds))
    return out


def run_wrk(port: int, path: str, clients: int, seconds: float) -> str | None:
    if shutil.which("wrk") is None:
        return None
    cmd = ["wrk", "-t2", f"-c{clients}", f"-d{int(seconds)}s", "--latency", f"http://{HOST}:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", out.stdout)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out.stdout)
    return (f"{float(rps.group(1)) if rps else float('nan'):.0f} req/s, p50 {p50.group(1) if p50 else '?'}, "
            f"p99 {p99.group(1) if p99 else '?'}" + (f", {errors.group(0)}" if errors else ""))  # fmt: skip


def ensure_db(db: str | None) -> str:
    if db and (Path(db).exists() or "://" in db):
        return db
    path = Path(db or REPO / "data" / "demo.db")
    print(f"building the demo index at {path} (conceptscope demo --no-serve) ...", flush=True)
    subprocess.run([sys.executable, "-m", "app.cli", "demo", "--no-serve", "--db", str(path)], cwd=REPO,
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default=None, help="index (default: data/demo.db, built if missing)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="per page under concurrent load")
    parser.add_argument("--query", default="yellow")
    parser.add_argument("--no-live", action="store_true", help="serve without the live model")
    parser.add_argument("--wrk", action="store_true", help="cross-check neuron + static with wrk")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="serve from this source tree (e.g. an older commit's, for a before/after)")
    parser.add_argument("--compare-uncached", action="store_true",
                        help="repeat the alone phase with the page cache off")  # fmt: skip
    args = parser.parse_args()
    db = ensure_db(args.db)
    live = not args.no_live
    print(f"index {db}; {args.workers} worker process(es); live model {'on' if live else 'off'}; "
          f"code {args.repo}")  # fmt: skip
    with served(db, workers=args.workers, live=live, repo=args.repo) as port:
        pages = discover_pages(port, args.query)
        alone = measure_alone(port, pages, args.sequential, args.warmup)
        distinct = asyncio.run(sequential(port, distinct_neurons(pages, args.sequential), 0))
        conc = measure_concurrent(port, pages, args.clients, args.seconds)
        wrk = {}
        if args.wrk:
            for name in ("neuron", "static"):
                wrk[name] = run_wrk(port, pages[name], args.clients, args.seconds)
    uncached = {}
    if args.compare_uncached:
        try:
            env = {"CONCEPTSCOPE_PAGE_CACHE_MB": "0"}
            with served(db, workers=args.workers, live=live, env=env, repo=args.repo) as port:
                uncached = measure_alone(port, pages, max(10, args.sequential // 5), 3)
        except RuntimeError as exc:
            print(f"uncached comparison failed: {exc}")

    names = [n for n in pages if not n.startswith("_")]
    print(f"\neach page alone ({args.sequential} sequential requests after {args.warmup} warm-up), ms:")
    print(f"  {'page':<14} {'p50':>8} {'p99':>8}" + ("   uncached p50" if uncached else ""))
    for name in names:
        extra = f"   {ms(uncached[name], 50):12.2f}" if uncached else ""
        print(f"  {name:<14} {ms(alone[name], 50):8.2f} {ms(alone[name], 99):8.2f}{extra}")
    print(f"  {'neuron, a different unit each time (cache misses)':<14}: p50 {ms(distinct, 50):.2f}, "
          f"p99 {ms(distinct, 99):.2f} ({len(distinct)} units)")  # fmt: skip
    print(f"\n{args.clients} concurrent clients, {args.seconds:g} s per page:")
    print(f"  {'page':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name in names:
        rps, times, errors = conc[name]
        print(f"  {name:<14} {rps:9.0f} {ms(times, 50):8.2f} {ms(times, 99):8.2f} {errors:7d}")
    for name, line in wrk.items():
        print(f"wrk -t2 -c{args.clients} {name}: {line}")
    static_rps, static_times, _ = conc["static"]
    page_names = [n for n in names if n != "static"]
    slowest = min(page_names, key=lambda n: conc[n][0])
    share = conc[slowest][0] / static_rps
    worst_p99 = max(page_names, key=lambda n: ms(conc[n][1], 99))
    p99_ratio = ms(conc[worst_p99][1], 99) / ms(static_times, 99)
    neuron_p50 = ms(alone["neuron"], 50)
    print(f"\nneuron page alone p50: {neuron_p50:.2f} ms (goal <= 10): "
          f"{'ok' if neuron_p50 <= 10 else 'MISSED'}")  # fmt: skip
    print(f"worst p99 / static p99: {p99_ratio:.2f} ({worst_p99}; goal <= 2): "
          f"{'ok' if p99_ratio <= 2 else 'MISSED'}")  # fmt: skip
    print(f"slowest page under load: {slowest} (goal share >= 0.5): {'ok' if share >= 0.5 else 'MISSED'}")
    errors = sum(conc[n][2] for n in names)
    if errors:
        print(f"errors under load: {errors}")
    print(f"share of static ceiling: {share:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
