"""Search at scale from server start: how long until the first search answers, and how fast after.

Serves an index with its live model (``conceptscope serve``, default live limit: 30 s) and, from
the moment ``/-/health`` answers (the model is loaded; the search's per-model preparation,
app/live/search_prep.py, has started in the background), polls ``/search.json?q=QUERY`` every
``--poll`` seconds until it answers 200. Prints each answer's status and time while preparing
(503 + Retry-After with the progress, never a hang), the time from start to ready, then the warm
search: the same query alone (sequential) and under ``--clients`` concurrent clients, and
``--distinct`` different queries one after the other (each does its own model work: the query's
text embedding, its rendering and the written responses). Baseline in the same run: the previous
code needed the whole preparation inside the first request (71-242 s on random RN50x4 at scale),
so with the 30 s limit it never answered; here ``first 200 after`` is the figure to compare.

    .venv/bin/python bench/search_warmup.py --db data/scale.db [--demo-db data/demo.db]

``--db`` is an index built by ``bench/scale_index.py`` (built here with its defaults if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from pages_load import HOST, concurrent, get_json, ms, sequential, served  # noqa: E402

WORDS = ("blue", "a dog", "water", "a face", "text", "green", "a star", "circle", "sky", "grass",
         "a car", "snow", "fire", "a cat", "wood", "a tree", "night", "bread", "metal", "sand")  # fmt: skip


def until_ready(port: int, path: str, poll_s: float, timeout_s: float) -> tuple[float, list[tuple]]:
    """Poll ``path`` until 200: (seconds to ready, [(t, status, seconds, retry_after, note)])."""
    started = time.monotonic()
    seen = []
    while True:
        t = time.monotonic()
        response = httpx.get(f"http://{HOST}:{port}{path}", timeout=timeout_s)
        took = time.monotonic() - t
        status, retry = response.status_code, response.headers.get("retry-after")
        try:
            note = response.json().get("note") or response.json().get("error")
        except Exception:  # noqa: BLE001 - not JSON
            note = response.text[:120]
        seen.append((round(t - started, 1), status, took, retry, note))
        if status == 200:
            return time.monotonic() - started, seen
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{path}: no 200 within {timeout_s:.0f} s: {seen[-3:]}")
        time.sleep(poll_s)


def measure(label: str, db: str, args: argparse.Namespace) -> None:
    env = {"CONCEPTSCOPE_LIVE_TIMEOUT_S": str(args.live_timeout)}
    t0 = time.monotonic()
    with served(db, live=True, timeout_s=900, env=env) as port:
        up = time.monotonic() - t0
        slug = get_json(port, "/.json")["models"][0]["slug"]
        path = f"/search.json?q={args.query}&model={slug}"
        ready, seen = until_ready(port, path, args.poll, args.timeout)
        print(f"[{label}] server up (model loaded) after {up:.1f} s; search ready {ready:.1f} s later")
        for t, status, took, retry, note in seen:
            print(f"  +{t:6.1f} s  HTTP {status} in {took * 1000:7.1f} ms  Retry-After {retry}  {note or ''}")
        not_ready = [took for _, status, took, _, _ in seen if status != 200]
        if not_ready:
            print(f"  {len(not_ready)} answers while preparing: all 503 = "
                  f"{all(s == 503 for _, s, _, _, _ in seen[:-1])}, slowest {max(not_ready) * 1000:.0f} ms")
        print(f"  first 200 after start of polling: {ready:.1f} s (that request {seen[-1][2] * 1000:.0f} ms)")
        alone = asyncio.run(sequential(port, [path] * args.sequential, 5))
        rps, times, errors = asyncio.run(concurrent(port, path, args.clients, args.seconds))
        print(f"  warm, same query alone: p50 {ms(alone, 50):.2f} ms, p99 {ms(alone, 99):.2f} ms; "
              f"{args.clients} clients: {rps:.0f} req/s, p50 {ms(times, 50):.2f} ms, "
              f"p99 {ms(times, 99):.2f} ms, errors {errors}")  # fmt: skip
        distinct = [f"/search.json?q={w.replace(' ', '+')}&model={slug}" for w in WORDS]
        each = asyncio.run(sequential(port, distinct, 0))
        print(f"  warm, {len(distinct)} different queries one after the other (model work each): "
              f"p50 {ms(each, 50):.0f} ms, max {max(each) * 1000:.0f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="data/scale.db")
    parser.add_argument("--demo-db", default=None, help="also measure this index (e.g. the demo)")
    parser.add_argument("--query", default="red")
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--live-timeout", type=float, default=30.0,
                        help="the server's CONCEPTSCOPE_LIVE_TIMEOUT_S (default: its own 30 s)")
    args = parser.parse_args()
    from scale_index import build, is_complete

    from app.config import db_url_from_arg

    db_url = db_url_from_arg(args.db)
    if not is_complete(db_url):
        print(f"building {db_url} (bench/scale_index.py defaults) ...", flush=True)
        build(db_url, images=200_000, units=2560, sample=10_000)
    measure("scale", args.db, args)
    if args.demo_db:
        measure("demo", args.demo_db, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
