"""Neuron page section: conditional-probability plot of the activation sample split by concept."""

from __future__ import annotations

from dataclasses import asdict

from app.db.meaning import concept_profile
from app.db.summaries import sample_image_ids
from app.neurons.plots import condprob_plot
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> dict[str, object] | None:
    if ctx.sample is None:
        return None
    profile = concept_profile(ctx.session, ctx.layer)
    if profile is None:
        return None
    image_ids = sample_image_ids(ctx.session, ctx.layer)  # not the layer's whole sample matrix
    if image_ids is None or len(image_ids) != len(ctx.sample):
        return None
    tags = [profile.image_tags.get(int(i), []) for i in image_ids]
    plot = condprob_plot(ctx.sample, tags)
    if plot is None:
        return None
    return {
        **plot.as_json(),
        "tag_source": profile.source,
        "svg": {
            "width": plot.width,
            "height": plot.height,
            "pad_left": plot.pad_left,
            "pad_right": plot.pad_right,
            "plot_top": plot.plot_top,
            "plot_bottom": plot.plot_bottom,
            "count_top": plot.count_top,
            "count_bottom": plot.count_bottom,
            "zero_x": plot.zero_x,
            "x_ticks": plot.x_ticks,
            "segments": [asdict(s) for s in plot.segments],
            "count_bars": [asdict(s) for s in plot.count_bars],
            "legend": [asdict(c) for c in plot.categories],
        },
    }
