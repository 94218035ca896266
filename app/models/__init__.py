"""Model specs and the model factory.

A model is an open_clip model: an architecture ``name`` (``RN50x4``, ``ViT-B-32``,
``conceptscope-demo``) plus a ``pretrained`` source (an open_clip tag such as ``openai``,
a local checkpoint file, or ``None`` for random weights). :func:`create_model` is the one factory
(open_clip's, with our configs of :mod:`app.models.registry`); :func:`load_model` returns the
model with its preprocess, tokenizer and the layers Conceptscope indexes. The demo model's own
helpers (training batches, fp16 weights) are in :mod:`app.models.demo`; the capture API in
:mod:`app.models.hooks`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.models.hooks import run_to
from app.models.registry import (
    CONFIG_DIR,
    DEMO_MODEL_NAME,
    DEMO_SLUG,
    DEMO_WEIGHTS,
    DEMO_WEIGHTS_NAME,
    RANDOM,
    WEIGHTS_DIR,
    demo_config,
    demo_config_beside,
    register_configs,
)

__all__ = [
    "CONFIG_DIR", "DEMO_MODEL_NAME", "DEMO_SLUG", "DEMO_WEIGHTS", "DEMO_WEIGHTS_NAME", "RANDOM",
    "WEIGHTS_DIR", "LayerInfo", "LoadedModel", "ModelLoadError", "ModelSpec", "create_model",
    "demo_config", "demo_config_beside", "indexed_layers", "load_model", "load_state_file", "mean_std",
    "register_configs",
]  # fmt: skip


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be found; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load: an open_clip architecture name and a weights source."""

    name: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, model: str, pretrained: str | None = None) -> ModelSpec:
        """Parse CLI input: ``demo``, ``RN50x4`` (+ ``pretrained``), or ``RN50x4:openai``."""
        model = model.strip()
        if pretrained is None and ":" in model and not model.startswith(("hf-hub:", "local-dir:")):
            model, pretrained = model.split(":", 1)
        if model.lower() in (DEMO_SLUG, DEMO_MODEL_NAME):
            return cls(DEMO_MODEL_NAME, pretrained)
        if pretrained in ("", RANDOM, "none", "None"):
            pretrained = None
        return cls(model, pretrained)

    @property
    def is_demo(self) -> bool:
        return self.name == DEMO_MODEL_NAME

    @property
    def slug(self) -> str:
        """Short, stable URL slug: ``demo``, ``rn50x4-openai``, ``vit-b-32-random``."""
        if self.is_demo and self.pretrained is None:
            return DEMO_SLUG
        if self.pretrained is None:
            source = RANDOM
        elif _looks_like_path(self.pretrained):
            source = Path(self.pretrained).stem
        else:
            source = self.pretrained
        return _slugify(f"{self.name}-{source}")


@dataclass(frozen=True)
class LayerInfo:
    """An indexed layer: where it is in ``model.visual`` and what its neurons look like."""

    name: str  # module path inside model.visual, e.g. "layer4.0" or "transformer.resblocks.11.mlp"
    hook: str  # module that is hooked, e.g. "layer4.0.act3" (pre-hook) or "...mlp.gelu"
    kind: str  # "resnet_block" (pre-ReLU residual sum) or "vit_mlp" (post-GELU hidden units)
    n_units: int
    grid: tuple[int, int]  # spatial map (H, W) at the model's input resolution
    is_last: bool  # last block: neurons have an exact direction in embedding space

    @property
    def hook_name(self) -> str:
        """Where :mod:`app.models.hooks` reads this layer: the input of ``hook`` for a ResNet block
        (``layer4.0.act3:in``), its output for a ViT MLP (``...mlp.gelu``)."""
        return f"{self.hook}:in" if self.kind == "resnet_block" else self.hook


@dataclass
class LoadedModel:
    """A ready model: eval mode, on ``device``, with its preprocess, tokenizer and layers."""

    spec: ModelSpec
    model: Any  # open_clip.CLIP
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    layers: list[LayerInfo]
    device: torch.device

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(
            self.model, "text_projection"
        ) and self.model.text_projection is not None else int(self.model.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", self.model.context_length))

    def layer(self, name: str) -> LayerInfo:
        """The indexed layer called ``name`` (KeyError if it is not indexed)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def create_model(
    name: str, pretrained: str | None = None, *, config: dict[str, Any] | None = None
) -> nn.Module:
    """The one model factory: ``open_clip.create_model`` with our configs registered.

    ``config`` (a whole model config, e.g. an experiment's :func:`demo_config`) replaces the
    registered one for this model only; open_clip's registry entry stays the shipped one.
    """
    import open_clip

    register_configs()
    return open_clip.create_model(name, pretrained=pretrained, **(config or {}))


def mean_std(model: nn.Module | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image normalisation of ``model``: its config's, else (and without a model) OpenAI CLIP's,
    ``open_clip.constants.OPENAI_DATASET_MEAN``/``_STD``."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    visual = getattr(model, "visual", model)
    mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
    return tuple(mean), tuple(std)


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Build ``spec`` with open_clip, load its weights, and describe its indexed layers.

    Raises :class:`ModelLoadError` with a one-line explanation when the architecture is
    unknown or the weights cannot be found or downloaded.
    """
    import open_clip

    register_configs()
    if spec.name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model {spec.name!r}: use 'demo' or an open_clip name such as RN50x4 or "
            "ViT-B-32 (see open_clip.list_models())"
        )
    device = torch.device(device)
    torch.manual_seed(0)  # random-weight models are reproducible
    model = _create(open_clip, spec)
    model.eval().to(device)
    preprocess = open_clip.image_transform(
        model.visual.image_size,
        is_train=False,
        mean=getattr(model.visual, "image_mean", None),
        std=getattr(model.visual, "image_std", None),
    )
    tokenizer = open_clip.get_tokenizer(spec.name)
    loaded = LoadedModel(spec, model, preprocess, tokenizer, [], device)
    loaded.layers = indexed_layers(loaded)
    return loaded


def _create(open_clip: Any, spec: ModelSpec) -> nn.Module:
    if spec.is_demo:
        weights = Path(spec.pretrained) if spec.pretrained else DEMO_WEIGHTS
        if spec.pretrained and not weights.is_file():
            raise ModelLoadError(f"demo weights file not found: {weights}")
        # experiment weights bring their own config; open_clip's registry entry stays the shipped one
        config = demo_config_beside(weights) if spec.pretrained else None
        with _quiet_open_clip_logging():
            model = create_model(DEMO_MODEL_NAME, config=config)
        if weights.is_file():
            load_state_file(model, weights)
        return model
    if spec.pretrained is None:
        return create_model(spec.name, pretrained=None)
    if _looks_like_path(spec.pretrained):
        path = Path(spec.pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}")
        if path.suffix == ".safetensors":
            with _quiet_open_clip_logging():
                model = create_model(spec.name, pretrained=None)
            load_state_file(model, path)
            return model
        try:
            return create_model(spec.name, pretrained=str(path))
        except Exception as exc:  # open_clip raises many types; report one line
            raise ModelLoadError(f"could not load checkpoint {path} into {spec.name}: {exc}") from exc
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if spec.pretrained not in tags:
        raise ModelLoadError(
            f"unknown pretrained tag {spec.pretrained!r} for {spec.name}; known tags: "
            f"{', '.join(tags) or 'none'}; or pass a local checkpoint file path"
        )
    try:
        with _quiet_open_clip_logging():
            return create_model(spec.name, pretrained=spec.pretrained)
    except Exception as exc:
        raise ModelLoadError(
            f"could not download the {spec.pretrained!r} weights of {spec.name} ({_first_line(exc)}); "
            f"download them where you have network access and pass the file instead: "
            f"--model {spec.name} --pretrained /path/to/checkpoint.pt"
        ) from exc


@contextmanager
def _quiet_open_clip_logging() -> Iterator[None]:
    """Silence open_clip's root-logger messages ("initialized randomly", "failed to download")
    where we load the weights ourselves or report the failure in one line."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(previous)


def load_state_file(model: nn.Module, path: Path) -> None:
    """Load a ``.safetensors`` (any float dtype) or torch checkpoint file into ``model``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {path} do not fit the model: {_first_line(exc)}") from exc


def indexed_layers(loaded: LoadedModel) -> list[LayerInfo]:
    """The layers we index for this architecture, with their unit counts and map sizes.

    ModifiedResNet: the last Bottleneck of ``layer3`` and ``layer4`` (pre-ReLU residual sum).
    VisionTransformer: the MLP hidden units (after the GELU) of the last two blocks.
    """
    visual = loaded.visual
    candidates: list[tuple[str, str, str]] = []
    if hasattr(visual, "layer4") and hasattr(visual, "attnpool"):
        for stage in ("layer3", "layer4"):
            last = len(getattr(visual, stage)) - 1
            candidates.append((f"{stage}.{last}", f"{stage}.{last}.act3", "resnet_block"))
    elif hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        n = len(visual.transformer.resblocks)
        for i in range(max(0, n - 2), n):
            name = f"transformer.resblocks.{i}.mlp"
            candidates.append((name, f"{name}.gelu", "vit_mlp"))
    else:
        raise ModelLoadError(f"unsupported vision tower {type(visual).__name__}")

    provisional = [LayerInfo(n, h, k, 0, (0, 0), False) for n, h, k in candidates]
    shapes = _layer_shapes(loaded, provisional)
    layers = []
    for i, layer in enumerate(provisional):
        units, grid = shapes[layer.name]
        layers.append(
            LayerInfo(layer.name, layer.hook, layer.kind, units, grid, i == len(provisional) - 1)
        )
    return layers


def _layer_shapes(
    loaded: LoadedModel, layers: list[LayerInfo]
) -> dict[str, tuple[int, tuple[int, int]]]:
    """Units and spatial grid of each layer, found with one forward pass of a blank image."""
    size = loaded.image_size
    blank = torch.zeros(1, 3, size, size, device=loaded.device)
    with torch.inference_mode():
        raw = run_to(loaded.visual, blank, [layer.hook_name for layer in layers])
    shapes: dict[str, tuple[int, tuple[int, int]]] = {}
    for layer in layers:
        tensor = raw[layer.hook_name]
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


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
