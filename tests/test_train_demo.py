"""``conceptscope train-demo``: curriculum, sparsity penalty and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from app.models import CONFIG_DIR, DEMO_WEIGHTS, DEMO_WEIGHTS_NAME
from app.models.demo import create_demo_model
from precompute import demo_world as world
from precompute import train_demo


def test_text_first_stage_precedes_the_curriculum() -> None:
    assert train_demo.curriculum(0.0) == train_demo.CURRICULUM
    stages = train_demo.curriculum(0.2)
    assert stages[0] == (0.2, train_demo.TEXT_FIRST_STAGE)
    assert train_demo.stage(0.1, text_first=0.2) is train_demo.TEXT_FIRST_STAGE
    assert train_demo.stage(0.21, text_first=0.2) is train_demo.CURRICULUM[0][1]
    assert train_demo.stage(0.99, text_first=0.2) is train_demo.CURRICULUM[-1][1]


def test_batch_stream_follows_the_text_first_stage() -> None:
    stream = train_demo.BatchStream(100, 32, text_first=0.5, matched_labels=1.0)
    early = [p for _, p in stream.captions(0)]
    assert {p["modality"] for p in early} <= {"text", "labelled_object"}
    for p in early:
        if p["modality"] == "labelled_object":
            assert p["word"] in (p["colour"], p["shape"])
    late = {p["modality"] for _, p in stream.captions(90)}
    assert {"object", "drawing"} <= late


def test_batch_stream_writes_distractor_words() -> None:
    pool = set(world.distractor_words())
    plain = train_demo.BatchStream(100, 64, text_first=0.5)
    mixed = train_demo.BatchStream(100, 64, text_first=0.5, distractors=0.5)
    assert not any(p["word"] in pool for _, p in plain.captions(0))
    texts = [p for _, p in mixed.captions(0) if p["modality"] == "text"]
    assert 0.2 < sum(p["word"] in pool for p in texts) / len(texts) < 0.8


def test_sparsity_penalty_is_scale_free_and_removes_its_hook() -> None:
    model, _ = create_demo_model()
    model.eval()
    penalty = train_demo._LastBlockSparsity(model)  # noqa: SLF001
    x = torch.randn(2, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
    with torch.no_grad():
        model.encode_image(x)
    value = float(penalty.pop())
    channels = model.visual.layer4[-1].conv3.out_channels
    assert 1 / math.sqrt(channels) - 1e-3 <= value <= 1.0
    with pytest.raises(AssertionError):
        penalty.pop()
    penalty.remove()
    with torch.no_grad():
        model.encode_image(x)
    assert penalty._value is None  # noqa: SLF001


@pytest.mark.slow
def test_tiny_training_run_writes_weights_card_and_curve(tmp_path: Path) -> None:
    config = json.loads((CONFIG_DIR / "conceptscope-demo.json").read_text())
    config["vision_cfg"]["layers"] = [1, 1, 1, 2]
    src = tmp_path / "deeper.json"
    src.write_text(json.dumps(config))
    out = tmp_path / "run"
    args = [
        "--steps", "2", "--batch", "8", "--out", str(out), "--config", str(src), "--threads", "1",
        "--workers", "0", "--eval-every", "2", "--eval-n", "2", "--sparsity", "0.5",
        "--matched-labels", "0.6", "--text-first", "0.5", "--distractors", "0.3",
    ]  # fmt: skip
    assert train_demo.main(args) == 0
    for name in ("conceptscope-demo.safetensors", "MODEL_CARD.md", "loss_curve.png", "train_log.json"):
        assert (out / name).is_file(), name
    card = (out / "MODEL_CARD.md").read_text()
    assert "--sparsity 0.5" in card and "--text-first 0.5" in card and "60% of them carry" in card
    assert "--distractors 0.3" in card and "30% of text images write a non-concept word" in card
    assert "visual.layer4.1" in card  # the experiment's own config was trained and evaluated
    assert '"layers": [\n      1,\n      1,\n      1,\n      2\n    ]' in card


def test_fine_tune_stream_reads_fresh_images_from_the_final_stage() -> None:
    scratch = train_demo.BatchStream(100, 32)
    tune = train_demo.BatchStream(100, 32, finetune=True)
    first = tune.captions(0)
    assert min(index for index, _ in first) >= train_demo.FINETUNE_OFFSET * 4 * 32
    assert not any(p.get("easy") for _, p in first)  # the curriculum's first stage writes easy words
    assert any(p.get("easy") for _, p in scratch.captions(0))
    assert {p["modality"] for _, p in first} >= {"object", "drawing", "text"}


def test_fine_tune_starts_from_the_given_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    shipped = DEMO_WEIGHTS
    out = tmp_path / "tune"
    args = ["--init", str(shipped), "--steps", "1", "--batch", "16", "--lr", "1e-12", "--warmup", "1",
            "--out", str(out), "--threads", "1", "--workers", "0", "--eval-every", "0", "--eval-n", "2",
            "--no-bf16"]  # fmt: skip
    assert train_demo.main(args) == 0
    log = json.loads((out / "train_log.json").read_text())
    # a random model's contrastive loss on 16 pairs is about ln 16 = 2.77; the trained one's is far lower
    assert log["losses"][0] < 0.5 * math.log(16)
    before, after = load_file(str(shipped)), load_file(str(out / DEMO_WEIGHTS_NAME))
    assert before.keys() == after.keys()
    moved = max(float((before[k].float() - after[k].float()).abs().max()) for k in before
                if before[k].is_floating_point() and "running_" not in k)
    assert moved < 1e-2  # lr 1e-12: the parameters stay (BatchNorm running statistics do move)
    card = (out / "MODEL_CARD.md").read_text()
    assert f"trained from `{shipped}` (a fine-tune)" in card and f"--init {shipped}`" in card
