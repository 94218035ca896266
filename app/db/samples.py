"""Activation samples: each layer's matrix of neuron values on a sample of dataset images."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import from_bytes
from app.db.schema import ActivationSample, Layer


def load_activation_samples(session: Session, model_id: int) -> dict[str, np.ndarray]:
    """Layer name → float16 ``(n_images, n_units)`` samples of model ``model_id`` (layers without
    samples are left out)."""
    rows = session.execute(
        select(Layer.name, ActivationSample)
        .join(ActivationSample, ActivationSample.layer_id == Layer.id)
        .where(Layer.model_id == model_id)
    ).all()
    return {name: from_bytes(s.values, "float16", (s.n_images, s.n_units)) for name, s in rows if s.n_images}
