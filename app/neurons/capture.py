"""Neuron activations of indexed layers: :class:`app.models.LayerInfo` on the capture API.

The capture API itself (hook names after module paths, the context manager that always removes
its hooks, the truncated forward pass) is :mod:`app.models.hooks`; this module is its caller for
indexed layers, keyed by ``layer.name``, each layer read at ``layer.hook_name``:

* ModifiedResNet blocks: the neuron value is the pre-ReLU residual sum, i.e. the *input* of
  the block's final ``act3`` ReLU (``layer4.0.act3:in``; cloned, since that ReLU is in-place).
* ViT MLP blocks: the hidden units after the GELU, one value per token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from app.models import LayerInfo, LoadedModel
from app.models.hooks import StopForward, hooks, run_to

__all__ = ["StopForward", "capture", "layer_maps", "run_visual", "spatial_maps"]


def _names(layers: Sequence[LayerInfo]) -> dict[str, str]:
    return {layer.name: layer.hook_name for layer in layers}


@contextmanager
def capture(
    visual: nn.Module,
    layers: Sequence[LayerInfo],
    *,
    stop: bool = False,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the raw activations of ``layers`` during forward passes run inside the block.

    Yields a dict ``layer.name -> tensor`` filled by each forward pass: ``(B, C, H, W)`` for
    ResNet blocks, ``(B, T, C)`` for ViT MLPs. ``stop`` and ``detach`` as in
    :func:`app.models.hooks.hooks`.
    """
    with hooks(visual, _names(layers), stop=stop, detach=detach) as store:
        yield store


def run_visual(
    visual: nn.Module, images: torch.Tensor, layers: Sequence[LayerInfo], *, detach: bool = True
) -> dict[str, torch.Tensor]:
    """Run ``visual`` on ``images`` only as far as the last of ``layers``; raw activations by layer name.

    With ``detach=False`` gradients flow back to ``images`` (feature visualization).
    """
    return run_to(visual, images, _names(layers), detach=detach)


def spatial_maps(raw: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """Raw activations → per-unit spatial maps ``(B, units, H, W)``.

    For ViT the prefix tokens (CLS) are dropped and patch tokens laid out on their grid.
    """
    if layer.kind == "resnet_block":
        return raw
    gh, gw = layer.grid
    patches = raw[:, raw.shape[1] - gh * gw :, :]
    return patches.transpose(1, 2).reshape(raw.shape[0], raw.shape[2], gh, gw)


def layer_maps(
    loaded: LoadedModel, images: torch.Tensor, layers: Sequence[LayerInfo] | None = None
) -> dict[str, torch.Tensor]:
    """Spatial maps ``(B, units, H, W)`` of each indexed layer for a batch of preprocessed images."""
    layers = list(layers if layers is not None else loaded.layers)
    with torch.inference_mode():
        raw = run_visual(loaded.visual, images.to(loaded.device), layers)
    return {layer.name: spatial_maps(raw[layer.name], layer) for layer in layers}
