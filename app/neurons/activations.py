"""One preprocessed image batch → per layer the neurons that fire, with values and heatmaps.

Shared by the precompute stages and the live endpoint so both compute a neuron's value the same
way: the spatial maps of :func:`app.neurons.capture.layer_maps` (pre-ReLU residual sums for
ResNet blocks, post-GELU MLP units for ViT), and the value of a neuron on an image is the
maximum of its map. Also: percentiles against a neuron's dataset distribution (the
``activation_samples`` table) and the parsing of typed class names. Text embeddings and
zero-shot probabilities are :mod:`app.neurons.zeroshot`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.neurons.capture import capture, spatial_maps
from app.neurons.scale import percentile_of

if TYPE_CHECKING:
    from app.models import LayerInfo, LoadedModel

DEFAULT_TOP_K = 12
MAX_CLASS_NAMES = 50
MAX_CLASS_NAME_CHARS = 100


def split_preprocess(
    preprocess: Callable[[Any], torch.Tensor],
) -> tuple[Callable[[Any], Any], Callable[[Any], torch.Tensor]]:
    """Split a torchvision ``Compose`` into (PIL → the PIL view the model sees, view → tensor).

    The view (resize + centre crop) is what heatmaps align with. Unknown transforms:
    (identity, the whole preprocess).
    """
    transforms = getattr(preprocess, "transforms", None)
    cut = next((i for i, t in enumerate(transforms or ()) if "totensor" in type(t).__name__.lower()), None)
    if not transforms or cut is None:
        return (lambda image: image), preprocess
    geometric, tensorize = transforms[:cut], transforms[cut:]

    def view(image: Any) -> Any:
        for t in geometric:
            image = t(image)
        return image

    def to_tensor(image: Any) -> torch.Tensor:
        out: Any = image
        for t in tensorize:
            out = t(out)
        return out

    return view, to_tensor


def spatial_max(maps: torch.Tensor) -> torch.Tensor:
    """Neuron values ``(B, units)`` from spatial maps ``(B, units, H, W)``: max over positions."""
    return maps.flatten(2).amax(dim=2)


@dataclass
class NeuronHit:
    """A neuron that fired on an image: its unit, value (spatial max) and heatmap (its map)."""

    unit: int
    value: float
    heatmap: np.ndarray  # float32 (H, W)


@dataclass
class ImageActivations:
    """What the model did with one image: every neuron's value, the top hits, the embedding."""

    values: dict[str, np.ndarray]  # layer -> float32 (units,)
    top: dict[str, list[NeuronHit]]  # layer -> hits, highest value first
    embedding: np.ndarray | None = None  # float32 (embed_dim,), L2-normalised
    extra: dict[str, Any] = field(default_factory=dict)


def forward_with_maps(
    loaded: LoadedModel,
    images: torch.Tensor,
    layers: Sequence[LayerInfo] | None = None,
    *,
    with_embedding: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Spatial maps of ``layers`` for a preprocessed batch, and (optionally) the normalised image
    embeddings from the same forward pass. Without the embedding the pass stops at the last layer.
    """
    from app.neurons.capture import layer_maps

    layers = list(layers if layers is not None else loaded.layers)
    images = images.to(loaded.device)
    if not with_embedding:
        return layer_maps(loaded, images, layers), None
    with torch.inference_mode(), capture(loaded.visual, layers) as store:
        embedding = loaded.model.encode_image(images)
        raw = dict(store)
    embedding = torch.nn.functional.normalize(embedding.float(), dim=-1)
    return {layer.name: spatial_maps(raw[layer.name], layer) for layer in layers}, embedding


Selector = Callable[[str, np.ndarray], Sequence[int]]
"""Chooses the units of a layer whose heatmaps are kept for one image: called with the layer's
name and the image's value (spatial max) of every unit of it, float32 ``(units,)``; returns unit
indices, best first (e.g. :func:`app.live.analysis.scale_selector`: on each unit's own scale)."""


def analyze_batch(
    loaded: LoadedModel,
    images: torch.Tensor,
    top_k: int | Sequence[int] = DEFAULT_TOP_K,
    layers: Sequence[LayerInfo] | None = None,
    *,
    with_embedding: bool = True,
    select: Selector | Sequence[Selector | None] | None = None,
) -> list[ImageActivations]:
    """Run a preprocessed batch ``(B, 3, S, S)``; per image every neuron's value, the ``top_k``
    neurons of each layer by value with their heatmaps (``top_k`` may differ per image), the
    embedding.

    ``select`` (one :data:`Selector` for all images, or one per image, ``None``: by value): the
    hits of an image with a selector are the units it chooses from all of the layer's values, in
    its order, instead of the ``top_k`` by raw value; only their heatmaps are copied out."""
    layers = list(layers if layers is not None else loaded.layers)
    batch = images.shape[0]
    ks = [int(top_k)] * batch if isinstance(top_k, int) else [int(k) for k in top_k]
    selects: list[Selector | None] = (
        [select] * batch if select is None or callable(select) else list(select)  # type: ignore[list-item]
    )
    if len(selects) != batch:
        raise ValueError(f"select has {len(selects)} entries for a batch of {batch}")
    maps, embedding = forward_with_maps(loaded, images, layers, with_embedding=with_embedding)
    results = [ImageActivations({}, {}) for _ in range(batch)]
    by_value = [i for i in range(batch) if selects[i] is None]
    for layer in layers:
        layer_maps_ = maps[layer.name].float()
        values = spatial_max(layer_maps_)
        values_np = values.cpu().numpy()
        k_max = min(max((ks[i] for i in by_value), default=0), values.shape[1])
        if k_max > 0:
            top_values, top_units = values.topk(k_max, dim=1)
            units_np = top_units.cpu().numpy()
            top_np = top_values.cpu().numpy()
        for i, result in enumerate(results):
            result.values[layer.name] = values_np[i]
            chooser = selects[i]
            if chooser is not None:
                chosen = [int(u) for u in chooser(layer.name, values_np[i])]
                index = torch.as_tensor(chosen, dtype=torch.long, device=layer_maps_.device)
                heatmaps = layer_maps_[i, index].cpu().numpy()
                result.top[layer.name] = [
                    NeuronHit(unit, float(values_np[i, unit]), heatmaps[j]) for j, unit in enumerate(chosen)
                ]
                continue
            k = min(ks[i], k_max)
            heatmaps = layer_maps_[i, top_units[i, :k]].cpu().numpy() if k > 0 else None
            result.top[layer.name] = [
                NeuronHit(int(units_np[i, j]), float(top_np[i, j]), heatmaps[j]) for j in range(k)
            ]
    if embedding is not None:
        emb = embedding.cpu().numpy()
        for i, result in enumerate(results):
            result.embedding = emb[i]
    return results


def parse_class_names(text: str | None) -> list[str]:
    """Comma-separated class names → a clean list (trimmed, no blanks, no duplicates, capped)."""
    if not text:
        return []
    names: list[str] = []
    for part in text.split(","):
        name = " ".join(part.split())[:MAX_CLASS_NAME_CHARS]
        if name and name.lower() not in {n.lower() for n in names}:
            names.append(name)
    return names[:MAX_CLASS_NAMES]


class Percentiles:
    """Percentile of a value within each neuron's dataset distribution (``activation_samples``).

    Holds, per layer, the sample matrix sorted along the image axis; the percentile of ``v`` for
    a unit is :func:`app.neurons.scale.percentile_of` (the share of sampled dataset images on
    which that unit's value is strictly below ``v``). Built from
    :func:`app.db.samples.load_activation_samples` with :meth:`from_arrays`.
    """

    def __init__(self, sorted_samples: dict[str, np.ndarray]) -> None:
        self.sorted = sorted_samples  # layer -> float32 (n_images, n_units), sorted along axis 0

    @classmethod
    def from_arrays(cls, samples: dict[str, np.ndarray]) -> Percentiles:
        return cls({name: np.sort(np.asarray(a, dtype=np.float32), axis=0) for name, a in samples.items()})

    def has(self, layer: str) -> bool:
        return layer in self.sorted and self.sorted[layer].shape[0] > 0

    def of(self, layer: str, unit: int, value: float) -> float | None:
        """Percentile (0–100) of ``value`` for ``unit`` of ``layer``; ``None`` without samples."""
        if not self.has(layer):
            return None
        column = self.sorted[layer][:, unit]
        # values are stored as float16: compare in float16 precision so a dataset image's own
        # value is never "below" itself
        v = float(np.float16(value)) if np.isfinite(value) else value
        return percentile_of(column, v, is_sorted=True)

    def sample_size(self, layer: str) -> int:
        return int(self.sorted[layer].shape[0]) if self.has(layer) else 0
