"""The shipped demo CLIP: it loads, reproduces its model card, and has a real "red" neuron."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.models.demo import load_demo_model
from precompute import demo_eval
from precompute import demo_world as world

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "app" / "models" / "weights"
WEIGHTS = WEIGHTS_DIR / "conceptscope-demo.safetensors"
CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def card_facts() -> dict[str, Any]:
    """The machine-readable facts block of MODEL_CARD.md."""
    m = re.search(r"<!-- facts: (\{.*?\}) -->", CARD.read_text(), re.S)
    assert m, "MODEL_CARD.md has no facts block"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[torch.nn.Module, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_demo_model(WEIGHTS)
    finally:  # later tests (and the child processes they compare with) keep the default
        torch.set_num_threads(threads)


def test_weights_are_small_fp16() -> None:
    from safetensors import safe_open

    assert WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    with safe_open(str(WEIGHTS), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118


def test_reproduces_card_zero_shot_accuracy(demo: tuple[torch.nn.Module, Any]) -> None:
    facts = card_facts()["regression"]
    model, tokenizer = demo
    acc = demo_eval.zero_shot_accuracy(model, tokenizer, n_per_class=facts["n_per_class"], seed=facts["seed"])
    for modality in demo_eval.EVAL_MODALITIES:
        assert abs(acc[modality] - facts[modality]) <= 0.03, (modality, acc, facts)


def test_red_neuron_responds_to_red_objects_and_the_word_red(demo: tuple[torch.nn.Module, Any]) -> None:
    unit = card_facts()["multimodal_neurons"]["red"][0]
    model, _ = demo
    seed, n = world.HELDOUT_SEED + 5, 8
    for modality in ("object", "text"):
        images, is_red = [], []
        for ci, colour in enumerate(world.COLOURS):
            for j in range(n):
                index = 900_000 + ci * 100 + j
                overrides = {"word": colour} if modality == "text" else {"colour": colour}
                images.append(world.render(seed, index, modality, **overrides).image)
                is_red.append(colour == "red")
        _, acts = demo_eval.encode_images(model, images)
        values = acts[:, unit].numpy()
        red = np.array(is_red)
        assert values[red].mean() > values[~red].mean(), modality
        assert demo_eval.dprime(values[:, None], red)[0] > 0.5, modality
