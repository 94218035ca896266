"""The labels stage under ``torchrun``: rank 0 drives, every rank computes a share.

``torchrun --nproc-per-node N -m app.cli precompute labels ...``: rank 0 runs the stage
(:func:`precompute.labels.label_model`: it reads the database, decides, and alone writes) and
hands the heavy per-item work to every rank through :func:`precompute.distributed.share_map`:

* image embeddings, batch by batch (:func:`embed_batches`; rank 0 checkpoints the merged
  embeddings in the stage's ``runs`` row after every round, so a killed job resumes);
* the forward passes over the rendered words, batch by batch (:func:`word_rendering_responses`);
* each unit's automatic labels and held-out evidence (``precompute.labels._unit_tag_labels``).

The other ranks wait in :func:`serve` (they load the model on their first task). Every item is
computed exactly as one process computes it (same batches, same function), and rank 0 puts the
results back in item order, so the stage writes the same rows as one process.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image as PILImage

from app.models import LoadedModel, ModelSpec, load_model
from app.neurons import multimodality as mm
from app.neurons import zeroshot
from precompute import distributed
from precompute.distributed import Context

_MODELS: dict[tuple[str, str | None], LoadedModel] = {}
_DEVICE = {"device": "cpu"}
WORD_BATCH = int(inspect.signature(mm.word_rendering_responses).parameters["batch"].default)
"""Images per forward pass over rendered words: the single-process default, so batches match."""


def context() -> Context:
    """This process's context (joins the process group under torchrun)."""
    return distributed.context()


def use_model(loaded: LoadedModel) -> None:
    """Rank 0's already loaded model serves its own share of the tasks."""
    _MODELS[(loaded.spec.name, loaded.spec.pretrained)] = loaded


def _model(spec: ModelSpec) -> LoadedModel:
    key = (spec.name, spec.pretrained)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, _DEVICE["device"])
    return _MODELS[key]


def serve(ctx: Context, device: str) -> int:
    """On ranks other than 0: compute shares of rank 0's tasks until it is done."""
    _DEVICE["device"] = distributed.device_for(ctx, device) if device == "auto" else (
        f"cuda:{ctx.local_rank}" if device.startswith("cuda") and ctx.distributed else device)  # fmt: skip
    return distributed.serve_maps(ctx)


def stop(ctx: Context) -> None:
    """On rank 0, when the stage is over (or failed): release the waiting ranks."""
    distributed.stop_maps(ctx)


# --- image embeddings ----------------------------------------------------------------------------


def _encode(spec: ModelSpec, images: list[PILImage.Image]) -> np.ndarray:
    return zeroshot.encode_images(_model(spec), images)


def embed_batches(
    loaded: LoadedModel, batches: list[list[PILImage.Image]], ctx: Context
) -> list[np.ndarray]:
    """Normalised embeddings of each batch of images (one forward pass each, spread over ranks)."""
    use_model(loaded)
    return distributed.share_map(_encode, batches, loaded.spec, ctx)


# --- rendered words ------------------------------------------------------------------------------


def _word_batch(shared: tuple[ModelSpec, list[str]], images: list[PILImage.Image]) -> dict[str, np.ndarray]:
    """Spatial-max responses ``layer -> (images, units)`` to one batch of renderings (one pass)."""
    spec, layer_names = shared
    loaded = _model(spec)
    infos = [loaded.layer(name) for name in layer_names]
    out = mm.word_rendering_responses(loaded, infos, list(range(len(images))), lambda i: [images[i]],
                                      batch=WORD_BATCH)  # fmt: skip
    return {name: v[:, 0, :] for name, v in out.items()}


def word_rendering_responses(
    loaded: LoadedModel,
    layers: Sequence[Any],
    words: Sequence[str],
    render: Callable[[str], Sequence[PILImage.Image]],
    ctx: Context,
) -> dict[str, np.ndarray]:
    """:func:`app.neurons.multimodality.word_rendering_responses` with its batches spread over the
    ranks: rank 0 renders every word (as one process does), each rank gets its batches. One
    process: the function itself."""
    if not ctx.distributed or not words or not layers:
        return mm.word_rendering_responses(loaded, layers, words, render)
    use_model(loaded)
    images: list[PILImage.Image] = []
    per_word = None
    for word in words:
        ims = list(render(word))
        per_word = len(ims) if per_word is None else per_word
        if len(ims) != per_word or not ims:
            raise ValueError("every word needs the same, non-zero number of renderings")
        images += ims
    batches = [images[start : start + WORD_BATCH] for start in range(0, len(images), WORD_BATCH)]
    parts = distributed.share_map(_word_batch, batches, (loaded.spec, [layer.name for layer in layers]), ctx)
    return {layer.name: np.concatenate([p[layer.name] for p in parts]).reshape(len(words), per_word, -1)
            for layer in layers}  # fmt: skip


def map_units(fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any, ctx: Context) -> list[Any]:
    """Per-unit work (e.g. label evidence) spread over the ranks, results in item order."""
    return distributed.share_map(fn, items, shared, ctx)
