"""Activation capture: pre-ReLU residual sums, ViT token maps, hook hygiene, early stop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.neurons.capture import capture, layer_maps, run_visual, spatial_maps


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


class _Seen(Exception):
    pass


def _input_of(visual: nn.Module, module_name: str, images: torch.Tensor) -> torch.Tensor:
    """The input tensor of ``module_name`` during a forward pass (recorded with a plain hook)."""
    seen: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach().clone())
        raise _Seen  # no need to run the rest of the model

    handle = visual.get_submodule(module_name).register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            visual(images)
    except _Seen:
        pass
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("fixture", ["demo_loaded", "rn50_random"])
def test_resnet_value_is_the_pre_relu_residual_sum(fixture, request):
    loaded = request.getfixturevalue(fixture)
    layer = loaded.layers[-1]
    block = loaded.visual.get_submodule(layer.name)
    torch.manual_seed(1)
    images = torch.randn(1, 3, loaded.image_size, loaded.image_size)
    # open_clip zero-inits each block's last BN scale, which would make the residual branch
    # vanish (pre-ReLU == post-ReLU for identity blocks); give it random values for this test.
    saved_bn3 = block.bn3.weight.detach().clone()
    try:
        with torch.no_grad():
            block.bn3.weight.copy_(torch.randn_like(saved_bn3))
        x = _input_of(loaded.visual, layer.name, images)
        with torch.no_grad():  # the Bottleneck, recomputed by hand up to (not including) act3
            out = block.act1(block.bn1(block.conv1(x)))
            out = block.act2(block.bn2(block.conv2(out)))
            out = block.bn3(block.conv3(block.avgpool(out)))
            expected = out + (block.downsample(x) if block.downsample is not None else x)
        maps = layer_maps(loaded, images)[layer.name]
    finally:
        with torch.no_grad():
            block.bn3.weight.copy_(saved_bn3)
    assert maps.shape == (1, layer.n_units, *layer.grid)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)
    assert (maps < 0).any(), "values must be taken before the (in-place) ReLU"


def test_hooks_are_removed_even_when_the_forward_raises(demo_loaded):
    visual = demo_loaded.visual
    before = _hook_count(visual)
    with pytest.raises(RuntimeError):
        with capture(visual, demo_loaded.layers):
            assert _hook_count(visual) == before + len(demo_loaded.layers)
            visual(torch.zeros(1, 5, 8, 8))  # wrong channel count: the forward raises
    assert _hook_count(visual) == before


def test_run_visual_stops_after_the_last_requested_layer(demo_loaded):
    calls = []
    handle = demo_loaded.visual.attnpool.register_forward_hook(lambda *_: calls.append(1))
    try:
        raw = run_visual(demo_loaded.visual, torch.zeros(1, 3, 96, 96), demo_loaded.layers[:1])
    finally:
        handle.remove()
    assert list(raw) == [demo_loaded.layers[0].name]
    assert calls == []
    assert _hook_count(demo_loaded.visual) == 0


def test_vit_token_maps_have_the_patch_grid(vit_b32_random):
    loaded = vit_b32_random
    layer = loaded.layers[-1]
    torch.manual_seed(2)
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        raw = run_visual(loaded.visual, images, [layer])[layer.name]
    assert raw.shape == (1, 1 + 7 * 7, layer.n_units)  # CLS + 7x7 patches

    mlp = loaded.visual.get_submodule(layer.name)
    x = _input_of(loaded.visual, layer.name, images)
    with torch.no_grad():
        expected = mlp.gelu(mlp.c_fc(x))  # hidden units after the GELU, per token
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-5)

    maps = spatial_maps(raw, layer)
    assert maps.shape == (1, layer.n_units, 7, 7)
    for row, col in [(0, 0), (0, 6), (3, 2), (6, 6)]:  # row-major patch order, CLS dropped
        torch.testing.assert_close(maps[:, :, row, col], raw[:, 1 + row * 7 + col, :])
