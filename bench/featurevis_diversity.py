"""How different a diversity set's images are (issue 18), against the previous method, same run.

Renders a diversity set of ``--size`` images for ``--units`` last-block neurons of the demo model
at the CPU defaults, three ways, and measures every set as the featurevis stage does
(:func:`app.neurons.featurevis.diversity_report`: 1 − cosine of the images' activations at the
diversity layer, near-duplicates below :data:`~app.neurons.featurevis.DISTINCT_DISTANCE`):

- ``previous``: the method shipped before (Lucid's Gram-matrix term, every image starting at the
  neuron's best flat colour);
- ``no term``: the current starts (image ``k`` at the ``k``-th best colour) without the term;
- ``current``: the current method (activation-cosine term + ranked colour starts).

Prints per method: median and mean pairwise distance, distinct images per set, sets with a hidden
near-duplicate, median objective (positive: higher is better), seconds; and the ratio of the
current method's mean distance to the previous one's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from app.models import ModelSpec, load_model
from app.neurons import featurevis as fv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=16, help="last-block neurons (evenly spaced)")
    parser.add_argument("--size", type=int, default=3, help="images per diversity set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="previous,no term,current", help="comma-separated subset")
    parser.add_argument("--weight", type=float, default=None, help="override the current weight (try-outs)")
    parser.add_argument("--gap", type=float, default=None, help="override start_gap (try-outs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec.parse("demo"), "cpu")
    layer = next(layer for layer in loaded.layers if layer.is_last)
    picked = [int(u) for u in torch.linspace(0, layer.n_units - 1, args.units).round().tolist()]
    units = [u for u in picked for _ in range(args.size)]
    groups = [g for g in range(len(picked)) for _ in range(args.size)]
    base = fv.default_settings(loaded)
    methods = {
        "previous": base.with_(diversity_term="gram", diverse_starts=False),
        "no term": base.with_(diversity_weight=0.0),
        "current": base,
    }
    if args.weight is not None:
        methods["current"] = methods["current"].with_(diversity_weight=args.weight)
    if args.gap is not None:
        methods = {k: v.with_(start_gap=args.gap) if k != "previous" else v for k, v in methods.items()}
    methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    print(f"demo model {layer.name}: {len(picked)} neurons x {args.size} images, {base.steps} steps at "
          f"{base.size} px; distinct from {fv.DISTINCT_DISTANCE}")
    means = {}
    for name, settings in methods.items():
        started = time.perf_counter()
        result = fv.render(loaded, layer, units, groups=groups, settings=settings)
        seconds = time.perf_counter() - started
        reports = [r for r in result.diversity if r is not None]
        firsts = [r for r in reports if r["position"] == 0]
        pairs = [d for r in firsts for d in r["pairwise"]]
        distinct = [r["distinct"] for r in firsts]
        means[name] = statistics.fmean(pairs)
        print(f"{name:9s} pairwise distance median {statistics.median(pairs):.3f} mean {means[name]:.3f}  "
              f"distinct per set {statistics.fmean(distinct):.2f} of {args.size}  "
              f"sets with a hidden near-duplicate {sum(d < args.size for d in distinct)}/{len(firsts)}  "
              f"median objective {statistics.median(result.objectives):.2f}  {seconds:.0f} s", flush=True)
    if "current" not in means or "previous" not in means:
        return 0
    print(f"mean distance current/previous: {means['current'] / means['previous']:.2f}x "
          f"(no term/previous {means['no term'] / means['previous']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
