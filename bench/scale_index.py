"""Page speed at RN50x4 scale: a synthetic index written directly, served beside the demo index.

Writes an RN50x4-shaped index straight into the database (synthetic activations, no model
forward): 2 layers (``layer4.4``, ``layer4.5``, the last block with unit directions) of 2,560
units, 200,000 images registered (their thumbnails repeat 1,000 contents: blobs are
content-addressed), the top 100 examples of every unit with 9x9 float16 heatmaps, a
10,000-image activation sample per layer; then runs ``precompute summaries`` on it. It serves
that index and the demo index (two ``conceptscope serve`` processes on 127.0.0.1) and measures,
page by page, alternating between the two servers: each page alone (sequential requests after a
warm-up) and under ``--clients`` (32) concurrent clients — neuron (HTML and JSON), layer and
search pages; plus, informational, the scale neuron page of a different unit every time (cache
misses: the page's own work).

Prints DB size, build time, p50/p99 per page and index, and last ``scale slowdown: X`` (the worst
p99 under load at full scale over the same page's p99 on the demo index). Goals: X <= 1.5; the
full-scale neuron page alone <= 20 ms (p50).

    .venv/bin/python bench/scale_index.py [--db data/scale.db | --db postgresql://...] \\
        [--demo-db data/demo.db] [--rebuild] [--images 200000] [--units 2560] [--wrk]

``--db`` takes a file path or any SQLAlchemy URL (e.g. PostgreSQL); an existing complete index is
reused unless ``--rebuild``. The live model of the scale index is RN50x4 with random weights
(open_clip, no download); it only encodes the search query.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pages_load import concurrent, ensure_db, ms, run_wrk, sequential, served  # noqa: E402

SLUG = "rn50x4-random"
LAYERS = ("layer4.4", "layer4.5")
EMBED_DIM = 640
GRID = 9
TOP_K = 100
DISTINCT_THUMBS = 1000
BATCH = 20_000


def _thumbs(n: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    from PIL import Image

    from app.db import sha256_hex

    out = []
    for i in range(n):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = Image.new("RGB", (96, 96), colour)
        x, y = i % 64, (i * 7) % 64
        image.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (x, y, x + 32, y + 32))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        data = buffer.getvalue()
        out.append((sha256_hex(data), data))
    return out


IMAGE_COLUMNS = ("dataset", "key", "position", "caption", "meta", "thumb_sha256", "width", "height")
EXAMPLE_COLUMNS = ("neuron_id", "rank", "image_id", "value", "heatmap")


def _bulk(session: object, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """``INSERT`` many rows through the driver's ``executemany`` (SQLite or PostgreSQL)."""
    conn = session.connection()  # type: ignore[attr-defined]
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    conn.exec_driver_sql(sql, rows)


def build(db_url: str, *, images: int, units: int, sample: int, seed: int = 0) -> dict[str, float]:
    """Write the synthetic index into an empty database at ``db_url``; returns timings (s)."""
    from sqlalchemy import func, insert, select

    from app.db import make_engine, session_factory, to_bytes
    from app.db.schema import (
        ActivationSample,
        Blob,
        Direction,
        Image,
        Layer,
        Model,
        Neuron,
        Run,
        utcnow,
    )

    rng = np.random.default_rng(seed)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    t0 = time.perf_counter()
    with sessions() as s:
        if s.scalar(select(func.count()).select_from(Model)):
            raise SystemExit(f"{db_url} is not empty: pass --rebuild or another --db")
        model = Model(slug=SLUG, name="RN50x4", pretrained=None, embed_dim=EMBED_DIM, image_size=288,
                      config={"synthetic": True})  # fmt: skip
        s.add(model)
        s.flush()
        thumbs = _thumbs(DISTINCT_THUMBS, rng)
        blobs = [{"sha256": sha, "mime": "image/jpeg", "data": data, "width": 96, "height": 96}
                 for sha, data in thumbs]  # fmt: skip
        s.execute(insert(Blob), blobs)
        for start in range(0, images, BATCH):
            _bulk(s, "images", IMAGE_COLUMNS,
                  [("synthetic", f"img/{i:07d}.jpg", i, None, "{}", thumbs[i % DISTINCT_THUMBS][0], 96, 96)
                   for i in range(start, min(images, start + BATCH))])  # fmt: skip
        first_image = s.scalar(select(func.min(Image.id)))
        s.commit()
        t_images = time.perf_counter()
        sample_ids = sorted(rng.choice(images, size=min(sample, images), replace=False).tolist())
        for position, name in enumerate(LAYERS):
            last = position == len(LAYERS) - 1
            layer = Layer(model_id=model.id, name=name, hook=f"{name}.act3", kind="resnet_block",
                          position=position, n_units=units, grid_h=GRID, grid_w=GRID,
                          is_last=last)  # fmt: skip
            s.add(layer)
            s.flush()
            values = rng.gamma(2.0, 1.0, size=(len(sample_ids), units)).astype(np.float32)
            values *= rng.uniform(0.5, 3.0, size=units).astype(np.float32)
            s.add(ActivationSample(layer_id=layer.id, image_ids=[first_image + i for i in sample_ids],
                                   n_images=len(sample_ids), n_units=units,
                                   values=to_bytes(values, "float16")))  # fmt: skip
            if last:
                directions = rng.standard_normal((units, EMBED_DIM)).astype(np.float32)
                s.add(Direction(layer_id=layer.id, n_units=units, embed_dim=EMBED_DIM,
                                values=to_bytes(directions, "float32")))  # fmt: skip
            s.execute(insert(Neuron), [
                {"layer_id": layer.id, "unit": u, "mean": float(values[:, u].mean()),
                 "std": float(values[:, u].std()), "max": float(values[:, u].max() * 1.5),
                 "multimodality": None}
                for u in range(units)])  # fmt: skip
            ids = dict(s.execute(select(Neuron.unit, Neuron.id).where(Neuron.layer_id == layer.id)).all())
            rows = []
            for u in range(units):
                top = np.sort(rng.uniform(values[:, u].max(), values[:, u].max() * 1.5, TOP_K))[::-1]
                chosen = rng.integers(0, images, TOP_K)
                heat = (rng.random((TOP_K, GRID, GRID)) * top[:, None, None]).astype("<f2")
                rows += [(ids[u], r, first_image + int(chosen[r]), float(top[r]), heat[r].tobytes())
                         for r in range(TOP_K)]  # fmt: skip
                if len(rows) >= BATCH:
                    _bulk(s, "top_examples", EXAMPLE_COLUMNS, rows)
                    rows = []
            if rows:
                _bulk(s, "top_examples", EXAMPLE_COLUMNS, rows)
            s.commit()
        s.add(Run(model_id=model.id, stage="activations", params={"synthetic": True},
                  params_hash="synthetic", status="done", progress={}, finished_at=utcnow()))  # fmt: skip
        s.commit()
    engine.dispose()
    t_rows = time.perf_counter()
    from precompute.summaries import run_summaries

    run_summaries(db_url, log=False)
    t_end = time.perf_counter()
    return {"images": t_images - t0, "units": t_rows - t_images, "summaries": t_end - t_rows,
            "total": t_end - t0}


def db_size(db_url: str) -> str:
    from sqlalchemy import text

    from app.db import make_engine
    from app.web.app import sqlite_path

    path = sqlite_path(db_url)
    if path is not None:
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    else:
        engine = make_engine(db_url, create=False)
        with engine.connect() as conn:
            size = int(conn.execute(text("select pg_database_size(current_database())")).scalar() or 0)
        engine.dispose()
    return f"{size / 2**20:.0f} MiB"


def is_complete(db_url: str) -> bool:
    from sqlalchemy import select

    from app.db import make_engine
    from app.db.schema import Run

    try:
        engine = make_engine(db_url, create=False)
        with engine.connect() as conn:
            done = conn.execute(select(Run.id).where(Run.stage == "summaries", Run.status == "done")).first()
        engine.dispose()
        return done is not None
    except Exception:
        return False


def drop(db_url: str) -> None:
    from app.db import make_engine
    from app.db.schema import Base
    from app.web.app import sqlite_path

    path = sqlite_path(db_url)
    if path is not None:
        for p in path.parent.glob(path.name + "*"):
            p.unlink()
        return
    engine = make_engine(db_url, create=False)
    Base.metadata.drop_all(engine)
    engine.dispose()


def wait_for_200(port: int, path: str, timeout_s: float = 900.0) -> float:
    """Poll ``path`` until it answers 200 (a live page answers 503 while its model loads); the
    seconds the answered request took."""
    from pages_load import Conn

    deadline = time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        status, _ = asyncio.run(Conn(port).get(path))
        if status == 200:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path}: HTTP {status} after {timeout_s:.0f} s")
        time.sleep(2)


def pages_of(slug: str, layer: str, unit: int, query: str) -> dict[str, str]:
    neuron = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    return {"neuron": neuron, "neuron.json": neuron + ".json", "layer": f"/models/{slug}/layers/{layer}",
            "search": f"/search?q={query}&model={slug}"}  # fmt: skip


def main() -> int:
    from app.config import db_url_from_arg

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="data/scale.db", help="file path or SQLAlchemy URL")
    parser.add_argument("--demo-db", default=None,
                        help="the demo index (default data/demo.db, built if missing)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=2560)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--query", default="red")
    parser.add_argument("--no-live", action="store_true", help="serve without live models (no search page)")
    parser.add_argument("--wrk", action="store_true",
                        help="cross-check the neuron page on both indexes with wrk (-t2, --clients)")
    parser.add_argument("--live-timeout", type=float, default=600.0,
                        help="the servers' live-request limit in s (CONCEPTSCOPE_LIVE_TIMEOUT_S): the first "
                             "search calibrates against 256 null words, longer than the default 30 s on a "
                             "busy CPU with RN50x4")  # fmt: skip
    args = parser.parse_args()
    db_url = db_url_from_arg(args.db)
    if args.rebuild:
        drop(db_url)
    if not is_complete(db_url):
        if Path(args.db).exists() and "://" not in args.db:
            drop(db_url)
        print(f"building {db_url}: {args.images} images, {len(LAYERS)} x {args.units} units, top-{TOP_K} "
              f"{GRID}x{GRID} heatmaps, {args.sample}-image sample ...", flush=True)  # fmt: skip
        times = build(db_url, images=args.images, units=args.units, sample=args.sample)
        print(f"build time: {times['total']:.1f} s (images {times['images']:.1f} s, units and examples "
              f"{times['units']:.1f} s, summaries {times['summaries']:.1f} s)")  # fmt: skip
    else:
        print("build time: reused an existing complete index (pass --rebuild to measure it)")
    print(f"DB size: {db_size(db_url)}")
    demo_db = ensure_db(args.demo_db)
    live = not args.no_live
    demo_pages = None
    results: dict[tuple[str, str], dict[str, object]] = {}
    env = {"CONCEPTSCOPE_LIVE_TIMEOUT_S": str(args.live_timeout)}
    first_search: dict[str, float] = {}
    with served(db_url, live=live, timeout_s=600, env=env) as scale_port, \
            served(demo_db, live=live, env=env) as demo_port:  # fmt: skip
        from pages_load import get_json

        demo_model = get_json(demo_port, "/.json")["models"][0]["slug"]
        demo_layers = get_json(demo_port, f"/models/{demo_model}.json")["layers"]
        demo_layer = next((x for x in demo_layers if x.get("is_last")), demo_layers[-1])["name"]
        demo_pages = pages_of(demo_model, demo_layer, 1, args.query)
        scale_pages = pages_of(SLUG, LAYERS[-1], 1, args.query)
        if not live:
            demo_pages.pop("search")
            scale_pages.pop("search")
        for name in scale_pages:
            for label, port, pages in (("demo", demo_port, demo_pages), ("scale", scale_port, scale_pages)):
                if name == "search":  # the live model may still be loading; then the first search
                    first_search[label] = wait_for_200(port, pages[name])  # calibrates (once)
                alone = asyncio.run(sequential(port, [pages[name]] * args.sequential, 10))
                rps, times, errors = asyncio.run(concurrent(port, pages[name], args.clients, args.seconds))
                results[(label, name)] = {"alone": alone, "rps": rps, "times": times, "errors": errors}
                print(f"  measured {name} on {label}: alone p50 {ms(alone, 50):.2f} ms; "
                      f"{args.clients} clients {rps:.0f} req/s, p99 {ms(times, 99):.2f} ms", flush=True)
        distinct = [f"/models/{SLUG}/layers/{LAYERS[i % 2]}/neurons/{(11 + 53 * i) % args.units}"
                    for i in range(50)]
        misses = asyncio.run(sequential(scale_port, distinct, 0))
        wrk = {}
        if args.wrk:  # an independent load generator on the same page of both indexes
            for label, port, pages in (("demo", demo_port, demo_pages), ("scale", scale_port, scale_pages)):
                wrk[label] = run_wrk(port, pages["neuron"], args.clients, max(args.seconds, 10))
    print(f"\n{'page':<12} {'index':<6} {'alone p50':>10} {'alone p99':>10} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>7}")  # fmt: skip
    for (label, name), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{name:<12} {label:<6} {ms(r['alone'], 50):10.2f} {ms(r['alone'], 99):10.2f} {r['rps']:8.0f} "
              f"{ms(r['times'], 50):8.2f} {ms(r['times'], 99):8.2f} {r['errors']:7d}")  # fmt: skip
    for label, line in wrk.items():
        print(f"wrk -t2 -c{args.clients} neuron page on {label}: {line or 'wrk not installed'}")
    for label, seconds in first_search.items():
        print(f"first search on {label} (model loaded; null calibration, then the query): {seconds:.1f} s")
    print(f"scale neuron page, a different unit each time (cache misses): p50 {ms(misses, 50):.2f} ms, "
          f"p99 {ms(misses, 99):.2f} ms")  # fmt: skip
    ratios = {name: ms(results[("scale", name)]["times"], 99) / ms(results[("demo", name)]["times"], 99)
              for (label, name) in results if label == "scale"}  # fmt: skip
    worst = max(ratios, key=lambda n: ms(results[("scale", n)]["times"], 99))  # the worst p99 at scale
    neuron_alone = ms(results[("scale", "neuron")]["alone"], 50)
    print(f"full-scale neuron page alone p50: {neuron_alone:.2f} ms (goal <= 20): "
          f"{'ok' if neuron_alone <= 20 else 'MISSED'}")  # fmt: skip
    print(f"worst page: {worst} (p99 scale/demo per page: "
          + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items()) + "; goal <= 1.5)")
    print(f"scale slowdown: {ratios[worst]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
