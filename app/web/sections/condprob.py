"""Neuron page section: conditional-probability plot of the activation sample split by concept."""

from __future__ import annotations

from dataclasses import asdict

from app.db.meaning import concept_profile
from app.db.schema import ActivationSample
from app.neurons.plots import condprob_plot
from app.web.sections import NeuronContext


def load(ctx: NeuronContext) -> dict[str, object] | None:
    if ctx.sample is None:
        return None
    sample = ctx.session.get(ActivationSample, ctx.layer.id)
    profile = concept_profile(ctx.session, ctx.layer)
    if sample is None or profile is None or len(sample.image_ids) != len(ctx.sample):
        return None
    tags = [profile.image_tags.get(int(i), []) for i in sample.image_ids]
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
