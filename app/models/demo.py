"""The bundled demo CLIP's helpers, shared by ``train-demo`` and ``eval-demo``.

The demo model is open_clip ``CLIP`` with config ``conceptscope-demo`` (a small ModifiedResNet
vision tower), built by the one factory :func:`app.models.create_model`. Here: build it fresh or
with its weights (an experiment's config beside its weights wins over the shipped one), turn PIL
images into its input the way its preprocess does, save fp16 weights, and name its last block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.models import LoadedModel, ModelSpec, create_model, load_state_file, mean_std
from app.models.registry import DEMO_MODEL_NAME, DEMO_WEIGHTS, demo_config


def create_demo_model(weights: Path | None = None) -> tuple[nn.Module, Any]:
    """A freshly initialised demo model and its tokenizer; the config is the one of ``weights``
    (beside them for an experiment, else the shipped one)."""
    import open_clip

    model = create_model(DEMO_MODEL_NAME, config=demo_config(weights))
    return model, open_clip.get_tokenizer(DEMO_MODEL_NAME)


def load_demo_model(weights: str | Path | None = None) -> tuple[nn.Module, Any]:
    """The demo model with the shipped (or given) fp16 weights, in fp32 eval mode, and its tokenizer."""
    path = Path(weights or DEMO_WEIGHTS)
    model, tokenizer = create_demo_model(path)
    load_state_file(model, path)
    model.eval()
    return model, tokenizer


def as_loaded(model: nn.Module, tokenizer: Any) -> LoadedModel:
    """A bare demo model (in training or evaluation) as a :class:`LoadedModel` for the model-maths
    functions of :mod:`app.neurons` (no preprocess, no indexed layers)."""
    device = next(model.parameters()).device
    def preprocess(image: Any) -> torch.Tensor:
        return to_tensor([image], None, model)[0]

    return LoadedModel(ModelSpec.parse("demo"), model, preprocess, tokenizer, [], device)


def save_weights(model: nn.Module, path: Path) -> None:
    """fp16 safetensors of ``model.state_dict()``."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"model": DEMO_MODEL_NAME, "format": "pt"})


def to_tensor(images: list[Any], size: int | None = None, model: nn.Module | None = None) -> torch.Tensor:
    """PIL images → normalised float tensor (N, 3, H, W): the model's preprocessing for images that
    are already square (resized to ``size`` if given), normalised with :func:`app.models.mean_std`."""
    arrays = []
    for im in images:
        if size is not None and im.size != (size, size):
            im = im.resize((size, size))
        arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = mean_std(model)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def last_block(model: nn.Module) -> str:
    """Name of the last Bottleneck of the vision tower (``layer4.N``), as indexed layers are named.

    Hook names inside ``model.visual``: its neurons (the pre-ReLU residual sum) at
    ``f"{name}.act3:in"``, the same place :class:`app.models.LayerInfo` reads them; the post-ReLU
    units at ``f"{name}.act3"``.
    """
    return f"layer4.{len(model.visual.layer4) - 1}"
