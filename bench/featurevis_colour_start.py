"""Feature visualization quality: the colour start against Lucid's grey start, on the demo model.

For every indexed layer, all neurons are rendered twice at the CPU stage defaults (64 steps, 64 px,
lr 0.1), once with ``colour_start`` (the default) and once starting from grey (``colour_start=0``,
Lucid's start). Printed per layer: the median and mean objective each reached, the share of
neurons whose best flat colour (of :func:`app.neurons.featurevis.flat_colour_candidates`) excites
them more than their visualization does, and the share of neurons the colour start improves; for
the last block also diagonal dominance and the named colour neurons' hues.

Run: ``.venv/bin/python bench/featurevis_colour_start.py`` (about 4 minutes on 2 cores).
The last line is ``objective colour/grey: X`` (median ratio over layers of the median objectives).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np
    import torch

    from app.models import ModelSpec, load_model
    from app.neurons import featurevis as fv
    from precompute.featurevis_quality import (
        diagonal_dominance,
        dominant_colour,
        named_colour_neurons,
    )

    torch.set_num_threads(2)
    loaded = load_model(ModelSpec.parse("demo"), "cpu")
    neurons = named_colour_neurons()
    settings = fv.default_settings(loaded)
    ratios = []
    for layer in loaded.layers:
        units = list(range(layer.n_units))
        flats = fv.flat_images(fv.flat_colour_candidates(), settings.size)
        best_flat = fv.all_unit_means(loaded, layer, flats).max(dim=0).values.cpu().numpy()
        reached = {}
        for start in (settings.colour_start, 0.0):
            result = fv.render(loaded, layer, units, settings=settings.with_(colour_start=start))
            values = np.array(result.objectives)
            reached[start] = values
            line = (f"{layer.name} colour_start {start}: median {np.median(values):.3f}, mean "
                    f"{values.mean():.3f}; a flat colour beats it for {np.mean(best_flat > values):.1%} "
                    f"({result.seconds:.0f} s)")
            if layer.is_last:
                hues = {c: dominant_colour(result.images[u]) for c, u in neurons.items()}
                right = sum(hues[c] == c for c in neurons)
                line += (f"; diagonal dominance {diagonal_dominance(loaded, layer, result.images):.1%}; "
                         f"hues {right}/{len(neurons)} {hues}")
            print(line, flush=True)
        colour, grey = reached[settings.colour_start], reached[0.0]
        ratios.append(float(np.median(colour) / np.median(grey)))
        print(f"  {layer.name}: better for {np.mean(colour > grey):.1%}; median colour/grey {ratios[-1]:.3f}")
    print(f"objective colour/grey: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
