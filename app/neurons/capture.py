"""Activation capture: hook named layers of ``model.visual`` inside a context manager.

Hook points are named after module paths (``layer4.0.act3``), as in TransformerLens. The
context manager always removes its hooks, also when the forward pass raises.

* ModifiedResNet blocks: the neuron value is the pre-ReLU residual sum, i.e. the *input* of
  the block's final ``act3`` ReLU. That ReLU is in-place, so the pre-hook clones its input.
* ViT MLP blocks: the hidden units after the GELU, one value per token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from app.models import LayerInfo, LoadedModel


class StopForward(Exception):
    """Raised by a hook to end the forward pass once every requested layer is captured."""


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
    ResNet blocks, ``(B, T, C)`` for ViT MLPs. With ``stop=True`` the forward pass raises
    :class:`StopForward` after the last requested layer (use :func:`run_visual`). With
    ``detach=False`` the tensors keep their autograd graph (feature visualization).
    """
    store: dict[str, torch.Tensor] = {}
    wanted = {layer.name for layer in layers}
    handles = []

    def record(name: str, value: torch.Tensor) -> None:
        value = value.detach().clone() if detach else value.clone()
        store[name] = value
        if stop and wanted.issubset(store):
            raise StopForward

    try:
        for layer in layers:
            module = visual.get_submodule(layer.hook)
            if layer.kind == "resnet_block":
                handles.append(module.register_forward_pre_hook(_pre_hook(layer.name, record)))
            else:
                handles.append(module.register_forward_hook(_post_hook(layer.name, record)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _pre_hook(name: str, record: Any) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        record(name, args[0])

    return hook


def _post_hook(name: str, record: Any) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        record(name, output)

    return hook


def run_visual(
    visual: nn.Module, images: torch.Tensor, layers: Sequence[LayerInfo], *, detach: bool = True
) -> dict[str, torch.Tensor]:
    """Run ``visual`` on ``images`` only as far as the last of ``layers``; return raw activations."""
    with capture(visual, layers, stop=True, detach=detach) as store:
        try:
            visual(images)
        except StopForward:
            pass
        return dict(store)


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


def capture_shapes(
    loaded: LoadedModel, layers: Sequence[LayerInfo]
) -> dict[str, tuple[int, tuple[int, int]]]:
    """Units and spatial grid of each layer, found with one forward pass of a blank image."""
    size = loaded.image_size
    blank = torch.zeros(1, 3, size, size, device=loaded.device)
    with torch.inference_mode():
        raw = run_visual(loaded.visual, blank, layers)
    shapes: dict[str, tuple[int, tuple[int, int]]] = {}
    for layer in layers:
        tensor = raw[layer.name]
        if layer.kind == "resnet_block":
            shapes[layer.name] = (tensor.shape[1], (tensor.shape[2], tensor.shape[3]))
        else:
            grid = getattr(loaded.visual, "grid_size", None)
            gh, gw = (int(grid[0]), int(grid[1])) if grid else _square(tensor.shape[1])
            shapes[layer.name] = (tensor.shape[2], (gh, gw))
    return shapes


def _square(tokens: int) -> tuple[int, int]:
    side = int((tokens - 1) ** 0.5)
    return side, side
