"""Feature visualization: images optimised to excite (or inhibit) neurons, many at once.

The recipe is Lucid's (Olah et al., "Feature Visualization", Distill 2017), rebuilt for batches:

* **Parameterisation.** Each image is a Fourier spectrum scaled by 1/f (``decay_power``), turned
  into pixels with an inverse real FFT, mapped through Lucid's ImageNet colour-correlation matrix
  (decorrelated colour space), squashed to ``[0, 1]`` with a sigmoid, and finally normalised with
  the model's own mean/std.
* **Robustness transforms.** Lucid's standard set (pad 12 with grey, jitter 8, scale 0.9-1.1,
  rotate -10..10 degrees, jitter 4), composed into a single affine map per image and applied with
  one batched ``affine_grid``/``grid_sample``. Every image draws its own random parameters at
  every step (Lucent draws one set for the whole batch).
* **Objective.** The spatial mean of a neuron's map: the pre-ReLU residual sum for ModifiedResNet
  blocks, the mean over patch tokens (CLS excluded) for ViT MLP units. The forward pass stops at
  the target layer. One image per (neuron, sign); the objectives of a batch are summed, so a batch
  of B images costs one forward/backward of B images per step. Negative visualizations minimise.
* **Diversity.** Several images per neuron, optimised jointly with a diversity penalty between the
  images of each group on an intermediate layer (Olah et al.): by default the mean pairwise cosine
  similarity of the images' activations there (``diversity_term="activations"``), or Lucid's
  cosine of their Gram matrices (``"gram"``). Images that start identical are a saddle point of
  either term (its gradient vanishes), and on the demo model a colour neuron's set stayed three
  copies of one flat colour; so image ``k`` of a set starts at its neuron's ``k``-th best flat
  colour (``diverse_starts``). After optimising, :func:`diversity_report` measures how different
  the images are (1 − cosine of their activations at that layer, on the un-transformed images)
  and marks each image closer than :data:`DISTINCT_DISTANCE` to an earlier one as a
  near-duplicate; the page hides those and says so.
* **Colour start** (ours; ``colour_start``). Lucid starts every image at grey, and the objective
  is far from convex in the image's mean colour: on the demo model a single flat colour excites
  47 % of last-block and 56 % of layer3 neurons more than their 64-step grey-start image does,
  and from grey the gradient can point away from the neuron's colour (the "purple" neuron climbs
  to 0.5 where a flat violet gives 7.5). So one forward pass first measures every neuron on
  :func:`flat_colour_candidates` (51 flat colours), and each image starts tinted towards the
  colour that excites (negative: inhibits) its neuron most, at ``colour_start`` times its logit.
  Measured at the CPU defaults: median objective +31 % (last block), +99 % (layer3).

fp32 on CPU (seeded and deterministic), bf16 autocast on CUDA. The model's parameters are frozen
for the duration (``requires_grad=False``) so no parameter gradients are computed.
"""

from __future__ import annotations

import colorsys
import copy
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.models import LayerInfo, mean_std
from app.models.hooks import run_to
from app.neurons.capture import run_visual, spatial_maps

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from app.models import LoadedModel

ALGORITHM = "conceptscope-featurevis-1"
DIVERSITY = "diversity"
"""Key of the diversity layer's activations in the forward pass's hook dict."""
DIVERSITY_METHOD = "activations-cosine/ranked-colour-starts/1"
"""Identifies how diversity sets are made and measured; stored with every diversity image, and the
featurevis stage re-renders sets made by another method (resumable, idempotent)."""
DISTINCT_DISTANCE = 0.2
"""Two images of a set are distinct when 1 − cosine of their diversity-layer activations reaches
this. Calibrated by eye on the demo model's last block (64 steps, 64 px): pairs that look identical
measured 0.002-0.1, alike (the same texture and colour, shifted) 0.14-0.24, visibly different
0.3-0.95."""

# Lucid's square root of the ImageNet colour correlation matrix (lucid/optvis/param/color.py).
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / np.max(
    np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)
)


@dataclass(frozen=True)
class RenderSettings:
    """Optimisation settings; stored as JSON next to every visualization."""

    steps: int = 256
    size: int | None = None  # image side in pixels; None = the model's input size
    lr: float = 0.05  # Adam, as in Lucid
    decay_power: float = 1.0  # 1/f^decay_power spectrum scaling
    init_sd: float = 0.01
    seed: int = 0
    # Lucid's standard transforms: pad, jitter, scale, rotate, jitter.
    pad: int = 12
    jitter: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5
    jitter2: int = 4
    transforms: bool = True
    canvas: bool | None = None  # transformed view on Lucid's larger canvas; None: yes unless ViT
    colour_start: float = 0.5  # start tinted towards the neuron's best flat colour; 0 = Lucid's grey
    diversity_weight: float = 2.0  # Lucid used 1e2 at InceptionV1 scale; 2 balances the demo model
    diversity_term: str = "activations"  # "activations" (cosine of hooked activations) | "gram" (Lucid)
    diversity_layer: str | None = None  # module path in model.visual; None = a sensible default
    diverse_starts: bool = True  # image k of a diversity set starts at its neuron's k-th best colour
    start_gap: float = 0.0  # ... of the colours at least this far apart (RGB distance)
    autocast: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    prepare: bool = True  # optimise through a BatchNorm-folded (and, on CPU, channels-last) copy

    def to_json(self, **extra: Any) -> dict[str, Any]:
        data = asdict(self)
        data["scales"] = list(self.scales)
        data["angles"] = list(self.angles)
        return {"algorithm": ALGORITHM, **data, **extra}

    def with_(self, **changes: Any) -> RenderSettings:
        """A copy with some fields replaced (``None`` values are ignored, except ``size``)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


CPU_STEPS = 64
CPU_LR = 0.1
"""Twice Lucid's step size for the 8× shorter CPU budget: on the demo model it reaches a 19 %
(last block) and 34 % (layer3) higher median objective in 64 steps, better for about 9 in 10
neurons; 0.15 and more turn the images noisy."""
GPU_STEPS = 512


def default_settings(loaded: LoadedModel, **changes: Any) -> RenderSettings:
    """Settings for ``loaded``'s device: on a GPU Lucid's 512 steps at the model's input size; on a
    CPU ``CPU_STEPS`` steps at ``CPU_LR`` and half the input size (Lucid, too, renders below the
    input size; a ViT needs its input size). ``changes`` override (``None`` values are ignored)."""
    if loaded.device.type == "cuda":
        base = RenderSettings(steps=GPU_STEPS, size=loaded.image_size)
    else:
        vit = any(layer.kind == "vit_mlp" for layer in loaded.layers)
        size = loaded.image_size if vit else max(32, loaded.image_size // 2)
        base = RenderSettings(steps=CPU_STEPS, size=size, lr=CPU_LR)
    return base.with_(**changes)


@dataclass
class Result:
    """Optimised images and what they reached."""

    images: torch.Tensor  # (N, 3, S, S) float32 in [0, 1], on CPU
    units: list[int]
    signs: list[int]  # +1 positive, -1 negative
    groups: list[int]  # diversity group of each image (image index when no diversity)
    objectives: list[float]  # neuron objective (spatial mean) on the un-transformed image
    diversity: list[dict[str, Any] | None] = field(default_factory=list)  # per image, see diversity_report
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------- parameterisation


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitude of each rfft2 coefficient (Lucid's helper)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


class FourierImage(nn.Module):
    """A batch of images parameterised by their decorrelated-colour Fourier spectra."""

    def __init__(
        self, n: int, size: int, *, decay_power: float = 1.0, sd: float = 0.01,
        generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.size = size
        freqs = rfft2d_freqs(size, size)
        spectrum = torch.randn((n, 3, *freqs.shape, 2), generator=generator) * sd
        self.spectrum = nn.Parameter(spectrum.to(device))
        scale = 1.0 / np.maximum(freqs, 1.0 / size) ** decay_power
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32, device=device)[..., None])
        color = torch.tensor(COLOR_CORRELATION_NORMALIZED, device=device)
        self.register_buffer("color", color)

    @torch.no_grad()
    def add_mean(self, logits: torch.Tensor) -> None:
        """Shift each image's mean by ``logits`` ``(n, 3)``, in pixel space before the sigmoid (a
        zero spectrum becomes the flat image ``sigmoid(logits)``); only the DC coefficients move."""
        decorrelated = torch.linalg.solve(self.color, logits.to(self.color).T).T  # (n, 3)
        # irfftn(norm="ortho") turns a DC coefficient a into a / size; forward() scales and divides by 4
        self.spectrum[:, :, 0, 0, 0] += decorrelated * (4.0 * self.size / self.scale[0, 0, 0])

    def forward(self) -> torch.Tensor:
        """Images in ``[0, 1]``, shape ``(n, 3, size, size)``."""
        spectrum = torch.view_as_complex(self.scale * self.spectrum)
        image = torch.fft.irfftn(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        n, c, h, w = image.shape
        image = (self.color @ image.reshape(n, c, h * w)).reshape(n, c, h, w)  # Lucid: t @ color.T
        return torch.sigmoid(image)


# --------------------------------------------------------------------------- transforms


def random_affine(
    n: int, size: int, settings: RenderSettings, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Per-image affine matrices ``(n, 2, 3)`` realising Lucid's standard transform set.

    pad ``p`` then jitter ``j1`` then scale ``s`` then rotate ``a`` then jitter ``j2``, with the
    result resampled back to ``size``: the view covers ``(size + 2p - j1 - j2) / s`` source pixels,
    rotated by ``a``, shifted by the two jitters. Coordinates are ``affine_grid``'s ``[-1, 1]``.
    """
    def pick(values: Sequence[float]) -> torch.Tensor:
        idx = torch.randint(len(values), (n,), generator=generator)
        return torch.tensor(values, dtype=torch.float32)[idx]

    scale = pick(settings.scales)
    angle = pick(settings.angles) * (math.pi / 180)
    def shift(d: int) -> torch.Tensor:  # crop offset in [0, d): a shift of the crop's centre
        if d <= 1:
            return torch.zeros(n, 2)
        return torch.randint(d, (n, 2), generator=generator).float() - (d - 1) / 2

    shift1, shift2 = shift(settings.jitter), shift(settings.jitter2)
    view = (size + 2 * settings.pad - settings.jitter - settings.jitter2) / scale / size
    cos, sin = torch.cos(angle) * view, torch.sin(angle) * view
    # the second jitter happens after rotation/scale: rotate it back into source coordinates
    s2 = torch.stack(
        [cos * shift2[:, 0] - sin * shift2[:, 1], sin * shift2[:, 0] + cos * shift2[:, 1]], dim=1
    )
    offset = (shift1 + s2) * (2.0 / size)
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], dim=1
    )
    return theta.to(device)


def apply_affine(
    images: torch.Tensor, theta: torch.Tensor, fill: float = 0.5, out_size: int | None = None
) -> torch.Tensor:
    """Resample each image with its own affine map onto an ``out_size`` square (default: the
    input size); outside the image reads ``fill`` (grey)."""
    n, c, h, w = images.shape
    shape = [n, c, out_size or h, out_size or w]
    grid = F.affine_grid(theta.to(images.dtype), shape, align_corners=False)
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


# --------------------------------------------------------------------------- model helpers


def normalisation(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input mean/std, :func:`app.models.mean_std`, as ``(1, 3, 1, 1)`` tensors on its
    device (what its preprocess normalises with)."""
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=loaded.device).view(1, 3, 1, 1)  # noqa: E731
    mean, std = mean_std(loaded.model)
    return as_t(mean), as_t(std)


def default_diversity_hook(loaded: LoadedModel, layer: LayerInfo) -> str:
    """Hook name of an intermediate layer for the diversity term (its output): ``layer2`` (ResNet)
    or a middle ViT block."""
    if layer.kind == "resnet_block":
        return "layer2"
    n = len(loaded.visual.transformer.resblocks)
    return f"transformer.resblocks.{max(0, n // 2 - 1)}"


_PREPARED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def prepared_visual(visual: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``visual`` made for optimisation: BatchNorm folded into the preceding conv, and
    channels-last memory on CPU (both exact up to float rounding). Cached per model; verified
    against the original on a random batch, falling back to ``visual`` if they disagree."""
    if visual in _PREPARED:
        return _PREPARED[visual]
    fast = copy.deepcopy(visual).eval()
    folded = 0
    for module in list(fast.modules()):
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.groups == 1:
                setattr(module, conv_name, _fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    channels_last = device.type == "cpu" and folded > 0
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast.requires_grad_(False)
    size = visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        ref, out = visual(probe), fast(probe)
    tolerance = 1e-3 * ref.abs().max().item()
    if folded == 0 or not torch.allclose(ref.float(), out.float(), rtol=1e-3, atol=tolerance):
        fast = visual
    _PREPARED[visual] = fast
    return fast


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter for the duration; restore afterwards."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero for the duration (Adam's second moments of tiny spectral
    gradients go denormal, and denormal arithmetic is very slow on CPUs). Restores torch's default
    (no flushing) afterwards; torch has no getter for the current mode."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def unit_means(raw: torch.Tensor, layer: LayerInfo, units: torch.Tensor) -> torch.Tensor:
    """Spatial mean of unit ``units[i]``'s map on image ``i`` → ``(B,)`` (float32)."""
    maps = spatial_maps(raw, layer)  # (B, C, H, W), ViT: patch tokens only
    picked = maps[torch.arange(maps.shape[0], device=maps.device), units]
    return picked.float().mean(dim=(-2, -1))


def resolve_layer(loaded: LoadedModel, layer: LayerInfo | str) -> LayerInfo:
    return loaded.layer(layer) if isinstance(layer, str) else layer


def objectives(
    loaded: LoadedModel, layer: LayerInfo | str, images: torch.Tensor, units: Sequence[int],
    *, batch: int = 64,
) -> list[float]:
    """The neuron objective (spatial mean of unit ``units[i]``) on un-transformed ``images[i]``.

    ``images`` are in ``[0, 1]`` (any size the model accepts); fp32, no gradients. This is the one
    function that measures what a visualization reached (stage, tests and benchmark use it).
    """
    layer = resolve_layer(loaded, layer)
    mean, std = normalisation(loaded)
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(units), batch):
            x = images[start : start + batch].to(loaded.device, torch.float32)
            u = torch.tensor(list(units[start : start + batch]), device=loaded.device)
            raw = run_visual(loaded.visual, (x - mean) / std, [layer], detach=False)[layer.name]
            out.extend(unit_means(raw, layer, u).tolist())
    return out


def flat_colour_candidates() -> torch.Tensor:
    """``(51, 3)`` RGB in ``[0.03, 0.97]``: 12 hues at 4 saturation/value levels, black, white and
    grey (the colours the colour start chooses from)."""
    levels = ((1.0, 1.0), (1.0, 0.6), (0.5, 1.0), (1.0, 0.35))
    colours = [colorsys.hsv_to_rgb(h / 12, sat, val) for h in range(12) for sat, val in levels]
    colours += [(0.05, 0.05, 0.05), (0.95, 0.95, 0.95), (0.5, 0.5, 0.5)]
    return torch.tensor(colours, dtype=torch.float32).clamp(0.03, 0.97)


def flat_images(colours: torch.Tensor, size: int) -> torch.Tensor:
    """``(K, 3)`` RGB colours in ``[0, 1]`` → ``(K, 3, size, size)`` flat images."""
    return colours[:, :, None, None].expand(-1, 3, size, size).contiguous()


def all_unit_means(
    loaded: LoadedModel, layer: LayerInfo, images: torch.Tensor, visual: nn.Module | None = None
) -> torch.Tensor:
    """``(images, units)``: the objective (spatial mean of the raw map) of every unit of ``layer``
    on every image (``(N, 3, S, S)`` in ``[0, 1]``); through ``visual`` (default: the model's)."""
    mean, std = normalisation(loaded)
    with torch.inference_mode():
        x = (images.to(loaded.device) - mean) / std
        raw = run_visual(visual or loaded.visual, x, [layer], detach=False)[layer.name]
        return spatial_maps(raw, layer).float().mean(dim=(-2, -1))


def best_flat_colours(
    visual: nn.Module, loaded: LoadedModel, layer: LayerInfo, units: torch.Tensor, signs: torch.Tensor,
    size: int, ranks: torch.Tensor | None = None, gap: float = 0.0,
) -> torch.Tensor:
    """``(n, 3)``: for each ``(units[i], signs[i])`` the candidate flat colour with the highest
    ``signs[i]`` × objective (one forward pass of the candidates through ``visual``); with
    ``ranks``, the ``ranks[i]``-th of the best colours that differ from the better ones by at
    least ``gap`` (RGB distance; 0: the ``ranks[i]``-th best)."""
    candidates = flat_colour_candidates().to(units.device)
    values = all_unit_means(loaded, layer, flat_images(candidates, size), visual)
    scores = values[:, units] * signs  # (candidates, n)
    if ranks is None:
        return candidates[scores.argmax(dim=0)]
    order = scores.argsort(dim=0, descending=True).cpu()
    picked = []
    for i, rank in enumerate(ranks.tolist()):
        chosen: list[int] = []
        for c in order[:, i].tolist():
            if all(float(torch.dist(candidates[c], candidates[o])) >= gap for o in chosen):
                chosen.append(c)
                if len(chosen) > rank:
                    break
        picked.append(chosen[min(rank, len(chosen) - 1)])
    return candidates[torch.tensor(picked, device=candidates.device)]


def batch_major(acts: torch.Tensor, n: int) -> torch.Tensor:
    """``acts`` with the batch (``n`` images) first: a sequence-first transformer block's output
    ``(L, n, D)`` becomes ``(n, L, D)``; batch-first outputs are returned as they are."""
    if acts.shape[0] != n and acts.dim() > 1 and acts.shape[1] == n:
        return acts.transpose(0, 1)
    return acts


def _group_mean_similarity(vectors: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum over images of the mean cosine similarity to the other images of its group."""
    b = vectors.shape[0]
    unit = F.normalize(vectors.reshape(b, -1), dim=1, eps=1e-10)
    sims = unit @ unit.T  # (B, B)
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(b, dtype=torch.bool, device=vectors.device)
    sizes = torch.bincount(groups, minlength=n_groups).float().clamp(min=1)[groups]
    return ((sims * same).sum(dim=1) / sizes).sum()


def gram_diversity(acts: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Lucid's diversity penalty, summed over groups: mean pairwise cosine of Gram matrices."""
    b, c = acts.shape[0], acts.shape[1]
    flat = acts.float().reshape(b, c, -1)
    return _group_mean_similarity(flat @ flat.transpose(1, 2), groups, n_groups)  # Grams (B, C, C)


def activation_diversity(acts: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """The default penalty, summed over groups: mean pairwise cosine of the hooked activations."""
    return _group_mean_similarity(acts.float(), groups, n_groups)


DIVERSITY_TERMS = {"activations": activation_diversity, "gram": gram_diversity}


def feature_distances(loaded: LoadedModel, hook: str, images: torch.Tensor) -> torch.Tensor:
    """``(N, N)``: 1 − cosine similarity of the images' activations at ``hook`` (a module path in
    ``model.visual``), measured on the un-transformed ``images`` (``[0, 1]``), fp32."""
    mean, std = normalisation(loaded)
    with torch.inference_mode():
        x = (images.to(loaded.device, torch.float32) - mean) / std
        acts = batch_major(run_to(loaded.visual, x, [hook])[hook], len(x)).float()
        unit = F.normalize(acts.reshape(acts.shape[0], -1), dim=1, eps=1e-10)
        return (1 - unit @ unit.T).clamp(min=0).cpu()


def pixel_distances(images: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """``(N, N)``: RMS difference of the images averaged down to ``cells`` × ``cells`` (colour
    layout, in pixel units of ``[0, 1]``); shown next to the feature distance."""
    small = F.adaptive_avg_pool2d(images.float(), cells).reshape(images.shape[0], -1)
    return torch.cdist(small, small) / math.sqrt(small.shape[1])


def distinct_images(distances: torch.Tensor, threshold: float = DISTINCT_DISTANCE) -> list[int | None]:
    """Greedy in order: image ``k`` is kept when its distance to every kept image reaches
    ``threshold``; otherwise the entry is the kept image it nearly duplicates (else ``None``)."""
    kept: list[int] = []
    out: list[int | None] = []
    for k in range(distances.shape[0]):
        near = min(kept, key=lambda j: float(distances[k, j]), default=None)
        if near is not None and float(distances[k, near]) < threshold:
            out.append(near)
        else:
            kept.append(k)
            out.append(None)
    return out


def diversity_report(
    loaded: LoadedModel, hook: str, images: torch.Tensor, groups: Sequence[int],
    threshold: float = DISTINCT_DISTANCE,
) -> list[dict[str, Any] | None]:
    """For each image of a group of two or more: how far it is from the others of its group and
    whether it nearly duplicates an earlier one (``None`` for images alone in their group).

    Keys: ``position`` in the group, ``size`` of the group, ``nearest`` (smallest feature
    distance to another image of the group), ``nearest_kept`` (the same over the distinct images
    other than itself, what the page shows; ``None`` when there is no other), ``nearest_pixel``
    (the pixel distance of the ``nearest`` pair),
    ``duplicate_of`` (position of the kept image it nearly duplicates, or ``None``),
    ``distinct`` (how many images of the group are distinct), ``pairwise`` (the group's pairwise
    feature distances, upper triangle in order), ``threshold``, ``measure``, ``method``."""
    out: list[dict[str, Any] | None] = [None] * len(groups)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    sets = [idx for idx in members.values() if len(idx) > 1]
    if not sets:
        return out
    every = [i for idx in sets for i in idx]
    feats = feature_distances(loaded, hook, images[every])
    pixels = pixel_distances(images[every])
    where = {i: k for k, i in enumerate(every)}
    for idx in sets:
        sel = torch.tensor([where[i] for i in idx])
        d, p = feats[sel][:, sel], pixels[sel][:, sel]
        dupes = distinct_images(d, threshold)
        n = len(idx)
        pairwise = [round(float(d[a, b]), 4) for a in range(n) for b in range(a + 1, n)]
        kept = [j for j in range(n) if dupes[j] is None]
        for pos, i in enumerate(idx):
            others = [j for j in range(n) if j != pos]
            nearest = min(others, key=lambda j: float(d[pos, j]))
            shown = [float(d[pos, j]) for j in kept if j != pos]
            out[i] = {
                "position": pos, "size": n, "nearest": round(float(d[pos, nearest]), 4),
                "nearest_kept": round(min(shown), 4) if shown else None,
                "nearest_pixel": round(float(p[pos, nearest]), 4), "duplicate_of": dupes[pos],
                "distinct": sum(x is None for x in dupes), "pairwise": pairwise,
                "threshold": threshold, "measure": f"1 - cosine of {hook} activations",
                "method": DIVERSITY_METHOD,
            }  # fmt: skip
    return out


def group_ranks(groups: torch.Tensor) -> torch.Tensor:
    """The position of each image within its group, in batch order (``[0, 0, 1, 1]`` → ``[0, 1, 0, 1]``)."""
    same_before = (groups[:, None] == groups[None, :]).tril(diagonal=-1)
    return same_before.sum(dim=1)


# --------------------------------------------------------------------------- the optimiser


def render(
    loaded: LoadedModel,
    layer: LayerInfo | str,
    units: Sequence[int],
    *,
    signs: Sequence[int] | None = None,
    groups: Sequence[int] | None = None,
    settings: RenderSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Optimise one image per entry of ``units`` (all in one batch) and measure what it reached.

    ``signs[i]`` is +1 (excite, default) or -1 (inhibit). Images that share a ``groups`` value
    form a diversity set (``settings.diversity_term`` on an intermediate layer, weight
    ``settings.diversity_weight``; ranked colour starts), measured afterwards
    (``Result.diversity``); without ``groups`` there is no diversity term. ``progress``
    is called with the number of steps done after each step.
    """
    import time

    started = time.perf_counter()
    settings = settings or RenderSettings()
    layer = resolve_layer(loaded, layer)
    device = loaded.device
    n = len(units)
    if n == 0:
        raise ValueError("no units to visualize")
    if any(not 0 <= u < layer.n_units for u in units):
        raise ValueError(f"unit out of range for {layer.name} ({layer.n_units} units)")
    size = settings.size or loaded.image_size
    if layer.kind == "vit_mlp" and size != loaded.image_size:
        raise ValueError(f"a ViT needs its input size ({loaded.image_size} px), not {size}")
    signs_t = torch.tensor(list(signs) if signs is not None else [1] * n, dtype=torch.float32, device=device)
    unit_t = torch.tensor(list(units), device=device)

    diversity_hook: str | None = None
    group_t: torch.Tensor | None = None
    n_groups = 0
    if groups is not None:
        if settings.diversity_term not in DIVERSITY_TERMS:
            known = ", ".join(DIVERSITY_TERMS)
            raise ValueError(f"unknown diversity term {settings.diversity_term!r} (have: {known})")
        remap = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        group_t = torch.tensor([remap[g] for g in groups], device=device)
        n_groups = len(remap)
        diversity_hook = settings.diversity_layer or default_diversity_hook(loaded, layer)
    hooked = {layer.name: layer.hook_name}
    if diversity_hook:
        hooked = {DIVERSITY: diversity_hook, **hooked}

    generator = torch.Generator().manual_seed(settings.seed)
    image = FourierImage(n, size, decay_power=settings.decay_power, sd=settings.init_sd,
                         generator=generator, device=device)
    mean, std = normalisation(loaded)
    use_autocast = settings.autocast and device.type == "cuda"
    visual = prepared_visual(loaded.visual, device) if settings.prepare else loaded.visual
    if settings.colour_start > 0:
        ranks = None
        if group_t is not None and settings.diverse_starts:
            ranks = group_ranks(group_t)
        colours = best_flat_colours(visual, loaded, layer, unit_t, signs_t, size, ranks, settings.start_gap)
        image.add_mean(settings.colour_start * torch.logit(colours))
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    # Lucid feeds the padded, jittered canvas (content at scale ~1) to the network; a ViT needs a
    # fixed input size, so there the view is resampled to ``size`` (as Lucent's fixed_image_size).
    lucid_canvas = layer.kind == "resnet_block" if settings.canvas is None else settings.canvas
    canvas = size + 2 * settings.pad - settings.jitter - settings.jitter2 if lucid_canvas else size
    channels_last = visual is not loaded.visual and device.type == "cpu"

    with frozen(visual), flushed_denormals():
        for step in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            pixels = image()
            if settings.transforms:
                theta = random_affine(n, size, settings, generator, device)
                pixels = apply_affine(pixels, theta, out_size=canvas)
            if channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                raw = run_to(visual, (pixels - mean) / std, hooked, detach=False)
            loss = -(signs_t * unit_means(raw[layer.name], layer, unit_t)).sum()
            if diversity_hook is not None and group_t is not None and settings.diversity_weight > 0:
                term = DIVERSITY_TERMS[settings.diversity_term]
                acts = batch_major(raw[DIVERSITY], n)
                loss = loss + settings.diversity_weight * term(acts, group_t, n_groups)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step + 1)
        with torch.no_grad():
            final = image().detach().float().cpu()
    reached = objectives(loaded, layer, final, list(units))
    extra: dict[str, Any] = {"size": size, "device": device.type,
                             "precision": "bf16-autocast" if use_autocast else "fp32"}
    diversity: list[dict[str, Any] | None] = [None] * n
    if diversity_hook is not None:
        extra["diversity_layer"] = diversity_hook
        extra["diversity_method"] = DIVERSITY_METHOD
        diversity = diversity_report(loaded, diversity_hook, final, list(groups or []))
    return Result(
        images=final,
        units=[int(u) for u in units],
        signs=[int(s) for s in (signs if signs is not None else [1] * n)],
        groups=list(groups) if groups is not None else list(range(n)),
        objectives=reached,
        diversity=diversity,
        settings=settings.to_json(**extra),
        seconds=time.perf_counter() - started,
    )


def to_pil(image: torch.Tensor) -> PILImage.Image:
    """A ``(3, H, W)`` tensor in ``[0, 1]`` → RGB PIL image."""
    from PIL import Image

    array = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def to_png(image: torch.Tensor) -> bytes:
    """A ``(3, H, W)`` tensor in ``[0, 1]`` → PNG bytes."""
    import io

    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
