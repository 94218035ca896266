"""What the atlas lays out: a layer's units as feature vectors (:mod:`app.neurons.atlas`)."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from app.db.related import layer_directions, layer_sample
from app.db.schema import Layer
from app.neurons.atlas import activation_profiles

DIRECTION = "direction"
PROFILE = "activation profile"
MIN_SAMPLE = 3  # images: fewer give no activation profile worth laying out


def layout_features(session: Session, layer: Layer) -> tuple[str, np.ndarray] | None:
    """``(kind, (units, features))``: the embedding directions of a last block, else the units'
    activation profiles over the stored sample (at least :data:`MIN_SAMPLE` images), else None."""
    directions = layer_directions(session, layer) if layer.is_last else None
    if directions is not None:
        return DIRECTION, directions
    sample = layer_sample(session, layer)
    if sample is not None and sample[1].shape[0] >= MIN_SAMPLE:
        return PROFILE, activation_profiles(sample[1])
    return None
