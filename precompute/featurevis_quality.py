"""``conceptscope eval-featurevis``: the feature-visualization quality checks on the demo model.

The checks of issue 5, measured and explained, for the colour neurons that ``eval-demo`` names
(from the model card's facts):

* **diagonal dominance**: the share of last-block neurons whose own visualization excites them
  more than the mean of the other neurons' visualizations do;
* **hue**: the dominant palette colour of each colour neuron's visualization (at the CPU defaults
  and at the GPU defaults: 512 steps at the input size), with the objective it reached;
* **flat fields**: each colour neuron's response to images of one flat palette colour. This is
  the model's side of the hue check: a neuron that answers other colours nearly as strongly as
  its own, or whose optimum is a texture, cannot be expected to show a single hue;
* **words**: the rank of the concept's word among the default vocabulary's rendered words, and
  the top word (the words stage's measure: spatial max on the rendered word).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from app.models.registry import WEIGHTS_DIR

if TYPE_CHECKING:
    from app.models import LayerInfo, LoadedModel

CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def named_colour_neurons(card: Path = CARD) -> dict[str, int]:
    """The colour concepts' multimodal neurons that ``eval-demo`` names (min d′ ≥ its threshold).

    Read from the model card's facts; measured afresh (10 images per class) when there is no card.
    """
    from app.models.demo import load_demo_model
    from precompute import demo_eval
    from precompute.demo_world import COLOURS

    if card.is_file() and (m := re.search(r"<!-- facts: (\{.*?\}) -->", card.read_text(), re.S)):
        facts = json.loads(m.group(1))
        named, threshold = facts["multimodal_neurons"], facts.get("threshold", demo_eval.THRESHOLD)
    else:
        model, tokenizer = load_demo_model()
        result = demo_eval.evaluate(model, None, tokenizer, n_per_class=10)
        named, threshold = result.multimodal_neurons, result.threshold
    return {c: int(v[0]) for c, v in named.items() if c in COLOURS and min(v[1], v[2]) >= threshold}


def dominant_colour(image: torch.Tensor) -> str:
    """The demo palette colour that most chromatic pixels of ``image`` (3, H, W) are nearest to
    (votes weighted by saturation); ``"none"`` for a grey image."""
    from precompute.demo_world import PALETTE

    names = list(PALETTE)
    pixels = image.permute(1, 2, 0).reshape(-1, 3).numpy()
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    chromatic = (hsv[:, 1] > 0.25) & (hsv[:, 2] > 0.15)
    if not chromatic.any():
        return "none"
    palette = np.array([PALETTE[n] for n in names], dtype=np.float32) / 255
    p_hsv = np.array([colorsys.rgb_to_hsv(*p) for p in palette])

    def hue_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.abs(a[:, None] - b[None, :])
        return np.minimum(d, 1 - d)

    # hue decides, value separates brown from orange, saturation pink from red
    dist = hue_dist(hsv[chromatic, 0], p_hsv[:, 0]) * 4 + np.abs(
        hsv[chromatic, 2][:, None] - p_hsv[None, :, 2]
    ) + 0.5 * np.abs(hsv[chromatic, 1][:, None] - p_hsv[None, :, 1])
    votes = np.bincount(dist.argmin(1), weights=hsv[chromatic, 1], minlength=len(names))
    return names[int(votes.argmax())]


def diagonal_dominance(loaded: LoadedModel, layer: LayerInfo, images: torch.Tensor) -> float:
    """Share of neurons ``i`` whose own visualization ``images[i]`` excites them more than the
    mean of the other visualizations does (``images`` holds one image per unit of ``layer``)."""
    from app.neurons import featurevis as fv

    matrix = fv.all_unit_means(loaded, layer, images).cpu()  # (image i, neuron j)
    own = matrix.diagonal()
    others = (matrix.sum(dim=0) - own) / (matrix.shape[0] - 1)
    return float((own > others).float().mean())


def flat_field_responses(loaded: LoadedModel, layer: LayerInfo, units: list[int], size: int) -> torch.Tensor:
    """``(palette colours, units)``: the featurevis objective of ``units`` on flat palette images."""
    from app.neurons import featurevis as fv
    from precompute.demo_world import PALETTE

    colours = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255
    return fv.all_unit_means(loaded, layer, fv.flat_images(colours, size))[:, units].cpu()


def word_ranks(loaded: LoadedModel, layer: LayerInfo, neurons: dict[str, int]) -> dict[str, tuple[int, str]]:
    """For each concept: (how many vocabulary words beat its own word, the top word)."""
    from precompute.words import default_vocabulary, word_values

    vocab = default_vocabulary(is_demo=True)
    units = list(neurons.values())
    values = torch.cat([word_values(loaded, vocab[i : i + 512])[layer.name][:, units]
                        for i in range(0, len(vocab), 512)])
    out = {}
    for j, concept in enumerate(neurons):
        own = values[vocab.index(concept), j]
        out[concept] = (int((values[:, j] > own).sum()), vocab[int(values[:, j].argmax())])
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope eval-featurevis``."""
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-words", action="store_true", help="leave out the ~10k-word ranking")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope eval-featurevis``: prints the report."""
    from app.models import ModelSpec, load_model
    from app.neurons import featurevis as fv
    from precompute.demo_world import PALETTE

    torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec.parse("demo"), "cpu")
    layer = next(layer for layer in loaded.layers if layer.is_last)
    neurons = named_colour_neurons()
    units = list(neurons.values())
    cpu = fv.default_settings(loaded)
    print(f"demo model, {layer.name}; colour neurons named by eval-demo: {neurons}")

    started = time.perf_counter()
    everything = fv.render(loaded, layer, list(range(layer.n_units)), settings=cpu)
    share = diagonal_dominance(loaded, layer, everything.images)
    print(f"diagonal dominance at the CPU defaults ({cpu.steps} steps, {cpu.size} px, lr {cpu.lr}): "
          f"{share:.1%} of {layer.n_units} neurons ({time.perf_counter() - started:.0f} s)")

    gpu = fv.RenderSettings(steps=fv.GPU_STEPS, size=loaded.image_size)
    runs = {"CPU defaults": (cpu, everything, {u: i for i, u in enumerate(everything.units)})}
    few = fv.render(loaded, layer, units, settings=gpu)
    runs["GPU defaults"] = (gpu, few, {u: i for i, u in enumerate(few.units)})
    for name, (settings, result, index) in runs.items():
        flats = flat_field_responses(loaded, layer, units, settings.size or loaded.image_size)
        print(f"\n{name} ({settings.steps} steps, {settings.size} px, lr {settings.lr}):")
        print(f"  {'concept':<8} {'unit':>4} {'hue found':<10} {'objective':>9} "
              f"{'best flat field':<22} {'own flat':>8}")
        for j, (concept, unit) in enumerate(neurons.items()):
            i = index[unit]
            best = int(flats[:, j].argmax())
            own = flats[list(PALETTE).index(concept), j]
            print(f"  {concept:<8} {unit:>4} {dominant_colour(result.images[i]):<10} "
                  f"{result.objectives[i]:9.2f} {list(PALETTE)[best] + f' {flats[best, j]:.2f}':<22} "
                  f"{float(own):8.2f}")
        if name == "CPU defaults":
            print("  flat-field responses (rows: palette colour; columns: the neurons above):")
            for c, row in zip(PALETTE, flats.tolist(), strict=True):
                print(f"    {c:<7} " + " ".join(f"{v:6.2f}" for v in row))
    hues = {c: dominant_colour(runs["CPU defaults"][1].images[runs["CPU defaults"][2][u]])
            for c, u in neurons.items()}
    print(f"\nhue check (CPU defaults): {sum(hues[c] == c for c in neurons)}/{len(neurons)}")
    if not args.skip_words:
        ranks = word_ranks(loaded, layer, neurons)
        print("words: concept -> words ranked above it (top word): "
              + ", ".join(f"{c} {r} ({w})" for c, (r, w) in ranks.items()))
        print(f"word check: {sum(r == 0 for r, _ in ranks.values())}/{len(neurons)}")
    return 0
