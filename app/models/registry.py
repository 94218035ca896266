"""Model configs as data, and the constants every model path shares (open_clip's pattern).

Architectures are open_clip JSON configs: open_clip's own, plus ours in ``app/models/configs/``
(``conceptscope-demo``), registered with :func:`register_configs`. An experiment trained by
``train-demo --config`` saves its config beside its weights (:func:`demo_config`). Image
normalisation is open_clip's: a model's ``visual.image_mean``/``image_std`` when its config sets
them, else ``open_clip.constants.OPENAI_DATASET_MEAN``/``_STD`` (:func:`app.models.mean_std`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_SLUG = "demo"
DEMO_MODEL_NAME = "conceptscope-demo"
DEMO_WEIGHTS_NAME = f"{DEMO_MODEL_NAME}.safetensors"
DEMO_WEIGHTS = WEIGHTS_DIR / DEMO_WEIGHTS_NAME
RANDOM = "random"


def register_configs() -> None:
    """Make our bundled model configs (``conceptscope-demo``) known to open_clip."""
    import open_clip

    if DEMO_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def demo_config_beside(weights: Path) -> dict[str, Any] | None:
    """The model config that ``train-demo --config`` saves beside experiment weights, if any."""
    beside = Path(weights).parent / f"{DEMO_MODEL_NAME}.json"
    return json.loads(beside.read_text()) if beside.is_file() else None


def demo_config(weights: Path | None = None) -> dict[str, Any]:
    """The config of the demo weights ``weights``: the one beside them, else the shipped one."""
    beside = demo_config_beside(weights) if weights is not None else None
    return beside if beside is not None else json.loads((CONFIG_DIR / f"{DEMO_MODEL_NAME}.json").read_text())
