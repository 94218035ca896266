"""Model specs, slugs and load_model on the real open_clip architectures (random weights)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from app.cli import main
from app.models import CONFIG_DIR, ModelLoadError, ModelSpec, load_model


@pytest.mark.parametrize(
    ("text", "pretrained", "name", "tag", "slug"),
    [
        ("demo", None, "conceptscope-demo", None, "demo"),
        ("conceptscope-demo", None, "conceptscope-demo", None, "demo"),
        ("RN50x4:openai", None, "RN50x4", "openai", "rn50x4-openai"),
        ("RN50x4", "openai", "RN50x4", "openai", "rn50x4-openai"),
        ("RN50", None, "RN50", None, "rn50-random"),
        ("RN50", "random", "RN50", None, "rn50-random"),
        ("ViT-B-32", None, "ViT-B-32", None, "vit-b-32-random"),
        ("ViT-B-32", "/ckpts/my_vit.safetensors", "ViT-B-32", "/ckpts/my_vit.safetensors", "vit-b-32-my-vit"),
    ],
)
def test_spec_parse_and_slug(text, pretrained, name, tag, slug):
    spec = ModelSpec.parse(text, pretrained)
    assert (spec.name, spec.pretrained, spec.slug) == (name, tag, slug)


def test_demo_model_layers(demo_loaded):
    names = [layer.name for layer in demo_loaded.layers]
    assert names == ["layer3.0", "layer4.5"]
    assert [layer.is_last for layer in demo_loaded.layers] == [False, True]
    assert demo_loaded.layer("layer4.5").kind == "resnet_block"
    config = json.loads((CONFIG_DIR / "conceptscope-demo.json").read_text())
    assert demo_loaded.image_size == config["vision_cfg"]["image_size"]


def test_rn50_layers(rn50_random):
    layers = {layer.name: layer for layer in rn50_random.layers}
    assert list(layers) == ["layer3.5", "layer4.2"]
    assert (layers["layer3.5"].n_units, layers["layer3.5"].grid) == (1024, (14, 14))
    assert (layers["layer4.2"].n_units, layers["layer4.2"].grid) == (2048, (7, 7))
    assert layers["layer4.2"].hook == "layer4.2.act3" and layers["layer4.2"].is_last
    assert rn50_random.embed_dim == 1024 and rn50_random.image_size == 224


def test_vit_b32_layers(vit_b32_random):
    layers = vit_b32_random.layers
    assert [layer.name for layer in layers] == [f"transformer.resblocks.{i}.mlp" for i in (10, 11)]
    assert all(layer.kind == "vit_mlp" and layer.n_units == 3072 and layer.grid == (7, 7) for layer in layers)
    assert layers[-1].hook == "transformer.resblocks.11.mlp.gelu" and layers[-1].is_last
    assert vit_b32_random.embed_dim == 512


def test_random_weights_are_reproducible(demo_loaded):
    again = load_model(ModelSpec.parse("demo"), "cpu")
    for (name, a), b in zip(
        demo_loaded.visual.state_dict().items(), again.visual.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_rn50x4_layers():
    loaded = load_model(ModelSpec.parse("RN50x4"), "cpu")
    layers = {layer.name: layer for layer in loaded.layers}
    assert (layers["layer4.5"].n_units, layers["layer4.5"].grid) == (2560, (9, 9))
    assert loaded.image_size == 288


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'NoSuchNet'"):
        load_model(ModelSpec.parse("NoSuchNet"))


def test_unknown_tag_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown pretrained tag 'nope'.*known tags: .*openai"):
        load_model(ModelSpec.parse("RN50:nope"))


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(ModelSpec.parse("RN50", str(tmp_path / "missing.pt")))


def test_undownloadable_tag_fails_fast_with_one_line():
    """HF_HUB_OFFLINE=1 (conftest) stands in for a machine without network access."""
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec.parse("RN50:openai"))
    message = str(info.value)
    assert "\n" not in message
    assert "openai" in message and "--pretrained /path/to/checkpoint" in message
    assert time.monotonic() - started < 60


def test_cli_exits_2_with_one_line_when_weights_cannot_be_downloaded(tmp_path, capsys):
    db = tmp_path / "x.db"
    code = main(
        [
            "precompute",
            "activations",
            "--model",
            "RN50",
            "--pretrained",
            "openai",
            "--db",
            str(db),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("conceptscope: error:")]
    assert len(errors) == 1 and "Traceback" not in captured.err
    assert not db.exists()  # nothing is created for a model that cannot be loaded


def test_demo_experiment_weights_bring_their_own_config(tmp_path):
    """``demo:PATH`` builds the config saved beside PATH; the shipped ``demo`` is unaffected."""
    from safetensors.torch import save_file

    from app.models.demo import create_demo_model

    config = json.loads((CONFIG_DIR / "conceptscope-demo.json").read_text())
    config["vision_cfg"]["layers"] = [1, 1, 1, 2]
    (tmp_path / "conceptscope-demo.json").write_text(json.dumps(config))
    weights = tmp_path / "conceptscope-demo.safetensors"
    model, _ = create_demo_model(weights)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(weights))

    experiment = load_model(ModelSpec.parse("demo", str(weights)))
    assert [layer.name for layer in experiment.layers] == ["layer3.0", "layer4.1"]
    shipped = load_model(ModelSpec.parse("demo"))
    shipped_layers = json.loads((CONFIG_DIR / "conceptscope-demo.json").read_text())["vision_cfg"]["layers"]
    assert shipped.layers[-1].name == f"layer4.{shipped_layers[-1] - 1}"
