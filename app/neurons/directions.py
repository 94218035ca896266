"""Each last-block neuron's direction in the joint image-text embedding space.

* ModifiedResNet: the last block's output feeds ``attnpool``, whose output is a convex
  (attention-weighted) combination of value vectors mapped by ``c_proj``. Unit ``u`` therefore
  contributes ``activation_u * c_proj.weight @ v_proj.weight[:, u]`` to the embedding, exactly
  when the pooled map is constant and up to the attention weights otherwise.
* VisionTransformer: a last-block MLP unit writes ``c_proj.weight[:, u]`` into the residual
  stream; the pooled token goes through ``ln_post`` (scale ``weight``) and ``proj``, so its
  direction is ``(c_proj.weight[:, u] * ln_post.weight) @ proj`` (the LayerNorm centring and
  normalisation are a per-image scalar and a small correction).

Zero-shot neuron search ranks neurons by the dot product of these directions with a text
embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from app.models import LayerInfo


class NoDirection(ValueError):
    """The layer is not a last block, or the vision tower has no known readout."""


def unit_directions(visual: nn.Module, layer: LayerInfo) -> torch.Tensor:
    """``(n_units, embed_dim)`` float32 directions (on the CPU) of ``layer``'s units."""
    if not layer.is_last:
        raise NoDirection(f"{layer.name} is not the last block; only its units have directions")
    with torch.no_grad():
        if layer.kind == "resnet_block":
            pool = getattr(visual, "attnpool", None)
            if pool is None:
                raise NoDirection("ModifiedResNet without attnpool")
            # (embed, width) @ (width, units) -> (embed, units)
            directions = pool.c_proj.weight.float() @ pool.v_proj.weight.float()
            return directions.T.contiguous().cpu()
        if layer.kind == "vit_mlp":
            mlp = visual.get_submodule(layer.name)
            out_columns = mlp.c_proj.weight.float()  # (width, units)
            scale = visual.ln_post.weight.float()  # (width,)
            proj = visual.proj
            if proj is None:
                raise NoDirection("VisionTransformer without an output projection")
            return ((out_columns * scale[:, None]).T @ proj.float()).contiguous().cpu()
    raise NoDirection(f"no direction rule for layer kind {layer.kind!r}")
