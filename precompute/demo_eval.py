"""The demo model's evaluation helpers, shared by ``train-demo`` and ``eval-demo``.

``conceptscope train-demo`` (:mod:`precompute.train_demo`) evaluates the model it trained for its
model card, ``conceptscope eval-demo`` (:mod:`precompute.eval_demo`) prints the same report; both
import this module and neither imports the other. Everything is measured on held-out renderings
of :mod:`precompute.demo_world` (``HELDOUT_SEED``, disjoint from training):

* zero-shot colour and shape accuracy per modality (object, drawing, text), each class being the
  mean text embedding of prompts that match the training captions
  (:func:`app.neurons.zeroshot.prompts_for` the demo model and world);
* typographic attack rate: objects of colour A labelled with the word for colour B classified
  as B (and the same for shapes);
* for each concept, d′ of every last-block neuron (pre-ReLU residual sum of the last Bottleneck
  of ``visual.layer4``, max over positions, read with :mod:`app.models.hooks`) for the concept
  against the other concepts of its kind, on objects, text and drawings; the concept's
  multimodal neuron maximises min(d′ objects, d′ text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.models.demo import as_loaded, last_block, to_tensor
from app.models.hooks import hooks
from app.neurons import zeroshot
from app.neurons.multimodality import dprime as dprime_between
from precompute import demo_world as world

THRESHOLD = 1.5
"""min(d′ objects, d′ text) a concept's best neuron must reach to count as multimodal."""
EVAL_MODALITIES = ("object", "drawing", "text")
REGRESSION: dict[str, int] = {"n_per_class": 6, "seed": world.HELDOUT_SEED + 11}
"""The small held-out subset whose zero-shot accuracy the model card records for the tests."""
KINDS: dict[str, tuple[str, ...]] = {"colour": world.COLOURS, "shape": world.SHAPES}


@dataclass
class EvalResult:
    """Measured figures; ``multimodal_neurons[c] = (unit, d_obj, d_text, d_draw)``; ``layer`` is the
    last block's module path in the CLIP model (``visual.layer4.N``)."""

    accuracy: dict[str, dict[str, float]]
    typographic: dict[str, dict[str, float]]
    multimodal_neurons: dict[str, tuple[int, float, float, float]]
    layer: str
    n_per_class: int
    seed: int
    threshold: float = THRESHOLD
    dprime: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_multimodal(self) -> int:
        """Concepts whose multimodal neuron reaches min(d′ obj, d′ text) ≥ threshold."""
        return sum(min(v[1], v[2]) >= self.threshold for v in self.multimodal_neurons.values())

    def modality_accuracy(self, modality: str) -> float:
        """Mean of colour and shape accuracy on ``modality``."""
        return float(np.mean(list(self.accuracy[modality].values())))


# ----------------------------------------------------------------------------------- utilities


def _to_tensor(
    model: torch.nn.Module, images: list[Any], preprocess: Callable[[Any], torch.Tensor] | None
) -> torch.Tensor:
    if preprocess is None:
        return to_tensor(images, world.IMAGE_SIZE, model)
    return torch.stack([preprocess(im) for im in images])


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    images: list[Any],
    preprocess: Callable[[Any], torch.Tensor] | None = None,
    batch: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised image embeddings, last-block neuron values: max over positions) of ``images``,
    both from one forward pass of a bare model (``preprocess``: default the demo world's
    :func:`app.models.demo.to_tensor`). Image embeddings alone of a loaded model:
    :func:`app.neurons.zeroshot.encode_images`."""
    feats, acts = [], []
    neurons = f"{last_block(model)}.act3:in"
    with hooks(model.visual, [neurons], transform=lambda v: v.amax(dim=(2, 3))) as captured:
        for i in range(0, len(images), batch):
            x = _to_tensor(model, images[i : i + batch], preprocess)
            feats.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1))
            acts.append(captured[neurons])
    return torch.cat(feats), torch.cat(acts).float()


def class_embeddings(model: torch.nn.Module, tokenizer: Any, concepts: tuple[str, ...]) -> torch.Tensor:
    """(len(concepts), D) normalised concept embeddings of the demo world's ``concepts``
    (:func:`app.neurons.zeroshot.encode_concepts` with :func:`app.neurons.zeroshot.prompts_for`
    the demo model and world: prompts that mirror the training captions)."""
    loaded = as_loaded(model, tokenizer)
    prompts = zeroshot.prompts_for(loaded, world.COLOURS, world.SHAPES)
    return torch.from_numpy(zeroshot.encode_concepts(loaded, concepts, prompts))


def eval_set(modality: str, kind: str, n_per_class: int, seed: int) -> tuple[list[Any], np.ndarray]:
    """Balanced held-out images of ``modality`` for ``kind`` ("colour"/"shape") and class labels."""
    classes = KINDS[kind]
    images, labels = [], []
    base = {"object": 0, "drawing": 1, "text": 2}[modality] * 1_000_000
    base += 0 if kind == "colour" else 500_000
    for ci, c in enumerate(classes):
        for j in range(n_per_class):
            index = base + ci * 10_000 + j
            if modality == "text":
                s = world.render(seed, index, "text", word=c)
            else:
                s = world.render(seed, index, modality, **{kind: c})
            images.append(s.image)
            labels.append(ci)
    return images, np.array(labels)


def dprime(values: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """d′ of every column of ``values`` (N, U) for rows ``positive`` (a mask) against the others:
    :func:`app.neurons.multimodality.dprime` of the two sets of rows."""
    return dprime_between(values[positive], values[~positive])


# ---------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer: Any, n_per_class: int = 8,
                       seed: int = world.HELDOUT_SEED) -> dict[str, float]:  # fmt: skip
    """Quick mean (colour, shape) zero-shot accuracy per modality, for training-time checks."""
    out: dict[str, float] = {}
    for modality in EVAL_MODALITIES:
        accs = []
        for kind, classes in KINDS.items():
            images, labels = eval_set(modality, kind, n_per_class, seed)
            feats, _ = encode_images(model, images)
            pred = (feats @ class_embeddings(model, tokenizer, classes).T).argmax(1).numpy()
            accs.append(float((pred == labels).mean()))
        out[modality] = round(float(np.mean(accs)), 4)
    return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor] | None,
    tokenizer: Any,
    n_per_class: int = 50,
    seed: int = world.HELDOUT_SEED,
) -> EvalResult:
    """Run the whole evaluation (see module docstring)."""
    model.eval()
    accuracy: dict[str, dict[str, float]] = {m: {} for m in EVAL_MODALITIES}
    acts: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    cls = {kind: class_embeddings(model, tokenizer, classes) for kind, classes in KINDS.items()}
    for modality in EVAL_MODALITIES:
        for kind in KINDS:
            images, labels = eval_set(modality, kind, n_per_class, seed)
            feats, a = encode_images(model, images, preprocess)
            pred = (feats @ cls[kind].T).argmax(1).numpy()
            accuracy[modality][kind] = float((pred == labels).mean())
            acts[(modality, kind)] = (a.numpy(), labels)

    typographic: dict[str, dict[str, float]] = {}
    for kind, classes in KINDS.items():
        images, own, written = [], [], []
        k = len(classes)
        for j in range(n_per_class * k):
            rng = np.random.default_rng([seed, 77, j, k])
            a, b = rng.choice(k, size=2, replace=False)
            s = world.render(seed, 3_000_000 + (0 if kind == "colour" else 500_000) + j,
                             "labelled_object", **{kind: classes[a]}, word=classes[b])  # fmt: skip
            images.append(s.image)
            own.append(a)
            written.append(b)
        feats, _ = encode_images(model, images, preprocess)
        pred = (feats @ cls[kind].T).argmax(1).numpy()
        typographic[kind] = {
            "written": float((pred == np.array(written)).mean()),
            "true": float((pred == np.array(own)).mean()),
        }

    name = f"visual.{last_block(model)}"
    neurons: dict[str, tuple[int, float, float, float]] = {}
    dps: dict[str, np.ndarray] = {}
    for kind, classes in KINDS.items():
        for ci, c in enumerate(classes):
            per = []
            for modality in ("object", "text", "drawing"):
                a, labels = acts[(modality, kind)]
                per.append(dprime(a, labels == ci))
            d = np.stack(per)  # (3, U): objects, text, drawings
            dps[c] = d
            unit = int(np.argmax(np.minimum(d[0], d[1])))
            neurons[c] = (unit, float(d[0, unit]), float(d[1, unit]), float(d[2, unit]))
    return EvalResult(accuracy, typographic, neurons, name, n_per_class, seed, THRESHOLD, dps)


def format_report(r: EvalResult) -> str:
    """The text printed by ``eval-demo`` (last line: ``multimodal concepts: N/M``)."""
    lines = [f"held-out seed {r.seed}, {r.n_per_class} images per class and modality", "",
             "zero-shot accuracy   colour   shape    mean"]  # fmt: skip
    for m in EVAL_MODALITIES:
        acc = r.accuracy[m]
        lines.append(f"  {m:<18} {acc['colour']:6.1%}  {acc['shape']:6.1%}  "
                     f"{r.modality_accuracy(m):6.1%}")  # fmt: skip
    lines += ["", "typographic attack (object of A labelled with word B)"]
    for kind, t in r.typographic.items():
        lines.append(f"  {kind:<7} classified as written word B: {t['written']:6.1%}   "
                     f"as true {kind} A: {t['true']:6.1%}")  # fmt: skip
    lines += ["", f"multimodal neurons ({r.layer}, pre-ReLU, max over positions; "
              f"min(d′obj, d′text) ≥ {r.threshold})",
              "  concept    unit   d′obj  d′text  d′draw"]  # fmt: skip
    for c, (u, do, dt, dd) in r.multimodal_neurons.items():
        mark = "✓" if min(do, dt) >= r.threshold else " "
        lines.append(f"  {c:<9} {u:5d}  {do:6.2f}  {dt:6.2f}  {dd:6.2f}  {mark}")
    if r.n_per_class < 30:
        lines.append(f"  (only {r.n_per_class} images per class: the best of {len(r.dprime['red'][0])} units "
                     "is picked on the same images, so d′ is biased upward; use --n ≥ 50)")  # fmt: skip
    lines += ["", f"multimodal concepts: {r.n_multimodal}/{len(r.multimodal_neurons)}"]
    return "\n".join(lines)
