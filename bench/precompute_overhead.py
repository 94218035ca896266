"""Throughput of the activations pass versus a bare ``model.encode_image`` loop.

Both loops read the same images through the same loader (``precompute.datasets.iter_batches``:
decode + resize/crop + normalise in a thread pool, overlapped with the model), with the same batch
size on the same device, so decoding is included in both. The pass is the whole stage
(``run_activations`` into a fresh SQLite file: hooks, top-k merge, statistics, sample,
thumbnails, checkpoints and the final DB writes); the baseline only runs ``encode_image``.
The pass runs a ModifiedResNet in channels-last layout on the CPU (``fast_layout``: same values,
faster convolutions), so the baseline is also timed in that layout ("like for like"). Repeats
alternate the order of the loops; the figures are medians of wall-clock images/s (images per
process CPU-second alongside, as the CPU is shared). The process's peak resident memory is
printed (``peak RSS``), and the pass alone is run once first in a fresh child process so its own
peak is measured too. The last line is ``ratio: X``: pass images/s divided by the images/s of
``encode_image`` on the model as loaded (1.0 = no overhead).

A real-size model needs no download: ``--model RN50x4`` builds open_clip's RN50x4 with seeded
random weights (same shapes and cost as ``openai``'s). On a GPU (``--device cuda``) the pass runs
under bf16 autocast with pinned, non-blocking batch copies (``--precision``), and the baseline
``encode_image`` under the same autocast.

    .venv/bin/python bench/precompute_overhead.py [--model demo] [--images N] [--repeats 7]
    .venv/bin/python bench/precompute_overhead.py --model RN50x4 --images 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from app.models import ModelSpec, load_model  # noqa: E402
from precompute.activations import fast_layout, run_activations  # noqa: E402
from precompute.datasets import Dataset, iter_batches, open_dataset  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "photos"


class Subset(Dataset):
    """The first ``n`` items of another dataset (so a folder can be cut to size)."""

    def __init__(self, inner: Dataset, n: int):
        self.inner, self.n = inner, min(n, len(inner))
        self.spec = f"{inner.spec}[:{self.n}]"

    def __len__(self) -> int:
        return self.n

    def key(self, position: int) -> str:
        return self.inner.key(position)

    def load(self, position: int):  # type: ignore[no-untyped-def]
        return self.inner.load(position)


def autocast_dtype(loaded, precision: str):
    """The autocast dtype the pass uses for ``precision`` on this device (None: fp32)."""
    if precision == "auto":
        precision = "bf16" if loaded.device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_encode(loaded, dataset: Dataset, batch_size: int, workers: int, precision: str = "auto") -> float:
    """Seconds for the baseline: same loader, ``encode_image`` only (same autocast and copies)."""
    dtype = autocast_dtype(loaded, precision)
    pin = loaded.device.type == "cuda"
    started = time.perf_counter()
    with torch.inference_mode(), torch.autocast(loaded.device.type, dtype=dtype, enabled=dtype is not None):
        for batch in iter_batches(dataset, loaded.preprocess, batch_size, workers=workers):
            if batch.pixels is not None:
                pixels = batch.pixels.pin_memory() if pin else batch.pixels
                loaded.model.encode_image(pixels.to(loaded.device, non_blocking=True))
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def precompute_pass(
    loaded, dataset: Dataset, batch_size: int, workers: int, top_k: int, sample: int, precision: str = "auto"
) -> float:
    """Seconds for the whole activations stage into a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        started = time.perf_counter()
        report = run_activations(
            loaded,
            dataset,
            url,
            top_k=top_k,
            batch_size=batch_size,
            sample_size=sample,
            device=str(loaded.device),
            workers=workers,
            progress=False,
            precision=precision,
        )
        elapsed = time.perf_counter() - started
    assert report.status == "done", report
    parts = ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items())
    print(f"  pass breakdown (s): {parts}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="how many images (default: all photos, or 1000 demo renderings)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--pass-only", action="store_true", help=argparse.SUPPRESS)  # the child run
    parser.add_argument(
        "--source",
        choices=("auto", "photos", "demo"),
        default="auto",
        help="auto: the photos folder when present, else demo-world renderings",
    )
    args = parser.parse_args()

    loaded = load_model(ModelSpec.parse(args.model), args.device)
    if args.source == "photos" and not PHOTOS.is_dir():
        parser.error(f"no photos folder at {PHOTOS}")
    if PHOTOS.is_dir() and args.source != "demo":
        dataset: Dataset = open_dataset(str(PHOTOS))
        source = f"photos in {PHOTOS}"
    else:
        dataset = open_dataset(f"demo:{args.images or 1000}")
        source = "demo-world renderings"
    if args.images:
        dataset = Subset(dataset, args.images)
    n = len(dataset)
    if args.pass_only:  # child: one pass, then this process's peak memory
        knobs = (args.batch_size, args.workers, args.top_k, args.sample, args.precision)
        precompute_pass(loaded, dataset, *knobs)
        print(f"peak RSS of a process running one pass: {peak_rss_mib():.0f} MiB")
        return
    print(
        f"model {loaded.spec.slug} ({loaded.image_size}px) on {loaded.device}, torch threads "
        f"{torch.get_num_threads()}, {n} images: {source}"
    )
    print(
        f"batch size {args.batch_size}, decode threads {args.workers}, top-k {args.top_k}, "
        f"sample {args.sample}"
    )
    print(
        "both loops decode + preprocess the same files through the same threaded loader; the pass "
        "is the whole stage incl. thumbnails and DB writes into a fresh SQLite file"
    )

    print(
        "the pass runs a ModifiedResNet in channels-last layout on the CPU (same values, faster convs); "
        "the baseline runs encode_image on the model as loaded, and once more in channels-last too"
    )

    def timed(fn) -> tuple[float, float]:  # (wall seconds, process CPU seconds)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    child = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], "--pass-only"], capture_output=True, text=True, check=True
    )
    pass_peak = child.stdout.strip().splitlines()[-1]
    print(pass_peak)

    def bare() -> None:
        bare_encode(loaded, dataset, args.batch_size, args.workers, args.precision)

    def bare_channels_last() -> None:
        with fast_layout(loaded):
            bare_encode(loaded, dataset, args.batch_size, args.workers, args.precision)

    def full() -> None:
        knobs = (args.batch_size, args.workers, args.top_k, args.sample, args.precision)
        precompute_pass(loaded, dataset, *knobs)

    loops = {"encode_image": bare, "encode_image channels-last": bare_channels_last, "precompute pass": full}
    bare()  # warm-up (caches, allocator)
    bare_channels_last()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for repeat in range(args.repeats):
        order = list(loops) if repeat % 2 == 0 else list(reversed(loops))  # no first-mover bias
        for name in order:
            times[name].append(timed(loops[name]))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {n / v[-1][0]:.1f} img/s" for k, v in times.items()))
    wall = {k: n / statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: n / statistics.median(c for _, c in v) for k, v in times.items()}
    for name in loops:
        print(f"median {name:<28} {wall[name]:7.1f} img/s   ({cpu[name]:7.1f} img per CPU-second)")
    like = wall["precompute pass"] / wall["encode_image channels-last"]
    print(f"ratio vs encode_image in the same channels-last layout: {like:.3f}")
    cpu_ratio = cpu["precompute pass"] / cpu["encode_image"]
    print(f"ratio of images per CPU-second (pass / encode_image as loaded): {cpu_ratio:.3f}")
    print(f"peak RSS of this process (model, all loops): {peak_rss_mib():.0f} MiB; {pass_peak}")
    print(f"ratio: {wall['precompute pass'] / wall['encode_image']:.3f}")


if __name__ == "__main__":
    main()
