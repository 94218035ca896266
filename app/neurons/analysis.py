"""Former name of :mod:`app.neurons.activations` (kept until every caller has moved)."""

from app.neurons.activations import *  # noqa: F403
from app.neurons.activations import (  # noqa: F401
    DEFAULT_TOP_K,
    ImageActivations,
    NeuronHit,
    Percentiles,
    analyze_batch,
    forward_with_maps,
    parse_class_names,
    spatial_max,
    split_preprocess,
)
