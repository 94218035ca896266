"""The one text-embedding and zero-shot module: texts, concepts, images, class probabilities.

Used by every page and stage that compares images with words: the live runner (analyze page,
search), the typographic attack lab, automatic labels, multimodality pseudo-labels, concept
recipes and the demo model's evaluation. Embeddings are L2-normalised float32 numpy arrays.

**Prompt policy.** Text is encoded one of two ways, and each caller uses exactly one:

* *As written*, :func:`encode_texts`: one embedding per text, no template, where the user wrote
  the text or the text is itself the query: the analyze page's class names
  (``app.live.analysis``), the search box and its vocabulary (``app.live.search``,
  ``app.live.search_prep``, ``eval-search``).
* *As a concept*, :func:`encode_concepts`: the normalised mean of the embeddings of the concept's
  prompts, the prompts being :func:`prompts_for` the model: for the demo model, a concept of the
  demo world (its colours and shapes, when the caller names them) gets the prompts that mirror
  the world's training captions (:func:`demo_world_prompts`), any other concept
  :data:`DEMO_TEMPLATES`; for every other model :data:`GENERAL_TEMPLATES` (CLIP's small general
  ensemble), :func:`templates_for` the model. The stages that know the demo world name it (the
  ``labels`` stage, ``train-demo``/``eval-demo`` through :mod:`precompute.demo_eval`); the
  typographic attack lab does not (its classes get :func:`templates_for` the model).

Probabilities are CLIP's: softmax of the model's learned temperature (:func:`logit_scale`)
times the cosine similarities (:func:`class_probabilities`; :func:`zero_shot` for one image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from app.models import LoadedModel, ModelSpec

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

Prompts = Callable[[str], Sequence[str]]
"""A concept's prompts: ``concept -> texts`` (see the module's prompt policy)."""


def templates_for(model: LoadedModel | ModelSpec) -> tuple[str, ...]:
    """The prompt templates suited to ``model`` (demo captions for the demo model)."""
    spec = getattr(model, "spec", model)
    return DEMO_TEMPLATES if spec.is_demo else GENERAL_TEMPLATES


def demo_world_prompts(concept: str, colours: Sequence[str], shapes: Sequence[str]) -> list[str]:
    """The prompts of a demo-world colour or shape (``colours``, ``shapes``: the world's): they
    mirror the world's training captions ("red", "the word red", "a photo of a red star", …)."""
    a = _article
    if concept in colours:
        c = concept
        return ([c, f"the word {c}", f"something {c}"]
                + [f"a photo of {a(c)} {c} {s}" for s in shapes]
                + [f"a drawing of {a(c)} {c} {s}" for s in shapes])  # fmt: skip
    s = concept
    return ([s, f"the word {s}", f"a photo of a {s}", f"a drawing of a {s}"]
            + [f"a photo of {a(c)} {c} {s}" for c in colours])  # fmt: skip


def prompts_for(
    model: LoadedModel | ModelSpec, colours: Sequence[str] = (), shapes: Sequence[str] = ()
) -> Prompts:
    """The prompt policy: ``concept -> prompts`` for ``model``. For the demo model, a concept
    among the demo world's ``colours`` and ``shapes`` gets :func:`demo_world_prompts`; every
    other concept :func:`templates_for` the model applied to it."""
    templates = templates_for(model)
    world = {*colours, *shapes}
    is_demo = getattr(model, "spec", model).is_demo

    def prompts(concept: str) -> list[str]:
        if is_demo and concept in world:
            return demo_world_prompts(concept, colours, shapes)
        return [t.format(concept) for t in templates]

    return prompts


def _article(word: str) -> str:
    return "an" if word and word[0] in "aeiou" else "a"


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
    loaded: LoadedModel, concepts: Sequence[str], prompts: Prompts | None = None
) -> np.ndarray:
    """One normalised embedding per concept: the mean of its prompt embeddings, re-normalised
    (the module's prompt policy). A concept with a single prompt gets that prompt's embedding.

    ``prompts``: ``concept -> prompts``, default :func:`prompts_for` the model.
    """
    prompts_of = prompts_for(loaded) if prompts is None else prompts
    lists = [list(prompts_of(c)) for c in concepts]
    flat = [text for texts in lists for text in texts]
    emb = encode_texts(loaded, flat)
    if all(len(texts) == 1 for texts in lists):
        return emb  # the mean of one normalised embedding is itself
    rows, start = [], 0
    for texts in lists:
        rows.append(emb[start : start + len(texts)].mean(0))
        start += len(texts)
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
    """Class probabilities ``(classes,)`` of one image (:func:`class_probabilities` of one row)."""
    return class_probabilities(image_embedding, text_embeddings, scale)[0]


def class_probabilities(image_emb: np.ndarray, class_emb: np.ndarray, scale: float) -> np.ndarray:
    """Zero-shot probabilities ``(N, classes)`` of ``N`` images: softmax of ``scale`` × cosine
    similarities (CLIP's recipe; :func:`zero_shot` for one image)."""
    logits = scale * (np.atleast_2d(image_emb) @ class_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
