"""Text and image embeddings for zero-shot work: concept prompts, image batches, class probabilities.

Shared by automatic labels, multimodality pseudo-labels, concept recipes and the typographic
attack lab. Embeddings are L2-normalised float32 numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from app.models import LoadedModel

GENERAL_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of a {}.",
    "a drawing of a {}.",
    "a close-up photo of the {}.",
    "a picture showing {}.",
)
"""Prompt templates for open-vocabulary concepts (CLIP-style ensemble)."""

DEMO_TEMPLATES: tuple[str, ...] = (
    "{}",
    "the word {}",
    "something {}",
    "a photo of a {}",
    "a drawing of a {}",
)
"""Prompt templates that mirror the demo world's training captions."""


def templates_for(loaded: LoadedModel) -> tuple[str, ...]:
    """The prompt templates suited to ``loaded`` (demo captions for the demo model)."""
    return DEMO_TEMPLATES if loaded.spec.is_demo else GENERAL_TEMPLATES


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """Normalised text embeddings ``(len(texts), embed_dim)``."""
    out = []
    for i in range(0, len(texts), batch):
        tokens = loaded.tokenizer(list(texts[i : i + batch])).to(loaded.device)
        out.append(loaded.model.encode_text(tokens).float().cpu().numpy())
    if not out:
        return np.zeros((0, loaded.embed_dim), np.float32)
    return _normalise(np.concatenate(out)).astype(np.float32)


def encode_concepts(
    loaded: LoadedModel,
    concepts: Sequence[str],
    templates: Sequence[str] | Callable[[str], Sequence[str]] | None = None,
) -> np.ndarray:
    """One normalised embedding per concept: the mean of its prompt embeddings, re-normalised.

    ``templates`` is a list of ``"{}"`` format strings or a function ``concept -> prompts``;
    default: :func:`templates_for` the model.
    """
    if templates is None:
        templates = templates_for(loaded)
    prompts_of: Callable[[str], Sequence[str]] = (
        templates if callable(templates) else (lambda c: [t.format(c) for t in templates])  # type: ignore[misc]
    )
    lists = [list(prompts_of(c)) for c in concepts]
    flat = [p for prompts in lists for p in prompts]
    emb = encode_texts(loaded, flat)
    rows, start = [], 0
    for prompts in lists:
        rows.append(emb[start : start + len(prompts)].mean(0))
        start += len(prompts)
    if not rows:
        return np.zeros((0, loaded.embed_dim), np.float32)
    return _normalise(np.stack(rows)).astype(np.float32)


def preprocess_batch(loaded: LoadedModel, images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (any mode) → a preprocessed batch on the model's device."""
    return torch.stack([loaded.preprocess(im.convert("RGB")) for im in images]).to(loaded.device)


@torch.inference_mode()
def encode_images(loaded: LoadedModel, images: Sequence[Image.Image], batch: int = 64) -> np.ndarray:
    """Normalised image embeddings ``(len(images), embed_dim)``."""
    out = []
    for i in range(0, len(images), batch):
        x = preprocess_batch(loaded, images[i : i + batch])
        out.append(loaded.model.encode_image(x).float().cpu().numpy())
    if not out:
        return np.zeros((0, loaded.embed_dim), np.float32)
    return _normalise(np.concatenate(out)).astype(np.float32)


def logit_scale(loaded: LoadedModel) -> float:
    """The model's learned softmax temperature (exp of ``logit_scale``), 100 for OpenAI CLIP."""
    scale: Any = getattr(loaded.model, "logit_scale", None)
    if scale is None:
        return 100.0
    return float(torch.as_tensor(scale).detach().float().exp().clamp(max=100.0))


def class_probabilities(image_emb: np.ndarray, class_emb: np.ndarray, scale: float) -> np.ndarray:
    """Zero-shot softmax probabilities ``(N, classes)`` from normalised embeddings."""
    logits = scale * (np.atleast_2d(image_emb) @ class_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
