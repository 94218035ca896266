"""The one text-embedding and zero-shot module: texts, concepts, images, class probabilities.

Used by every page and stage that compares images with words: the live runner (analyze page,
search), the typographic attack lab, automatic labels, multimodality pseudo-labels and concept
recipes. Embeddings are L2-normalised float32 numpy arrays.

**Prompt policy.** A class name becomes one embedding, :func:`encode_concepts`: the normalised
mean of the embeddings of its prompts, the prompts being ``templates`` applied to the name. The
default is :func:`templates_for` the model (prompts that mirror the demo world's training
captions for the demo model, CLIP's small general ensemble otherwise). A page where the user
types the prompts themselves passes :data:`AS_WRITTEN`: each name is encoded as typed, exactly
:func:`encode_texts` (the analyze page's class names and the search box do; the typographic lab
and the stages use the default). Probabilities are CLIP's: softmax of the model's learned
temperature (:func:`logit_scale`) times the cosine similarities (:func:`class_probabilities`).
"""

from __future__ import annotations

import math
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

AS_WRITTEN: tuple[str, ...] = ("{}",)
"""No template: a class name is encoded as typed (the user wrote the prompt)."""


def templates_for(loaded: LoadedModel) -> tuple[str, ...]:
    """The prompt templates suited to ``loaded`` (demo captions for the demo model)."""
    return DEMO_TEMPLATES if loaded.spec.is_demo else GENERAL_TEMPLATES


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """Normalised text embeddings ``(len(texts), embed_dim)`` of ``texts`` as written."""
    out = []
    for i in range(0, len(texts), batch):
        tokens = loaded.tokenizer(list(texts[i : i + batch])).to(loaded.device)
        features = loaded.model.encode_text(tokens)
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, loaded.embed_dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_concepts(
    loaded: LoadedModel,
    concepts: Sequence[str],
    templates: Sequence[str] | Callable[[str], Sequence[str]] | None = None,
) -> np.ndarray:
    """One normalised embedding per concept: the mean of its prompt embeddings, re-normalised
    (the module's prompt policy). A concept with a single prompt gets that prompt's embedding.

    ``templates`` is a list of ``"{}"`` format strings or a function ``concept -> prompts``;
    default: :func:`templates_for` the model; :data:`AS_WRITTEN`: the concept as typed.
    """
    if templates is None:
        templates = templates_for(loaded)
    prompts_of: Callable[[str], Sequence[str]] = (
        templates if callable(templates) else (lambda c: [t.format(c) for t in templates])  # type: ignore[misc]
    )
    lists = [list(prompts_of(c)) for c in concepts]
    flat = [p for prompts in lists for p in prompts]
    emb = encode_texts(loaded, flat)
    if all(len(prompts) == 1 for prompts in lists):
        return emb  # the mean of one normalised embedding is itself
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
    """The model's learned softmax temperature (``exp(logit_scale)``, capped at 100; 100 without one)."""
    scale: Any = getattr(loaded.model, "logit_scale", None)
    if scale is None:
        return 100.0
    return float(min(100.0, math.exp(float(scale.detach().cpu()))))


def zero_shot(image_embedding: np.ndarray, text_embeddings: np.ndarray, scale: float) -> np.ndarray:
    """Class probabilities of one image: softmax of ``scale`` × cosine similarities (CLIP's recipe)."""
    logits = scale * (text_embeddings @ image_embedding)
    logits = logits - logits.max()
    probs = np.exp(logits)
    return probs / probs.sum()


def class_probabilities(image_emb: np.ndarray, class_emb: np.ndarray, scale: float) -> np.ndarray:
    """Zero-shot softmax probabilities ``(N, classes)`` of ``N`` images (:func:`zero_shot` for one)."""
    logits = scale * (np.atleast_2d(image_emb) @ class_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
