"""One scale for every page (app/neurons/scale.py), one per-app state helper (app/web/state.py),
per-app preview caches (app/db/previews.py) and the analysis' unit moments (app/live/analysis.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.db.previews import PreviewCache, _cached
from app.live.analysis import UnitMoments, rank_key, z_score
from app.neurons.activations import Percentiles
from app.neurons.scale import layer_scales, percentile_of, z_of
from app.web.state import app_cache, versioned_cache


def test_percentile_is_the_share_strictly_below_sorted_or_not() -> None:
    sample = np.array([3.0, 1.0, 2.0, 2.0, 5.0], dtype=np.float32)
    for v, want in ((0.5, 0.0), (1.0, 0.0), (2.0, 20.0), (2.5, 60.0), (5.0, 80.0), (9.0, 100.0)):
        assert percentile_of(sample, v) == pytest.approx(want)
        assert percentile_of(np.sort(sample), v, is_sorted=True) == pytest.approx(want)
    assert percentile_of(None, 1.0) is None and percentile_of(np.array([]), 1.0) is None


def test_z_needs_a_mean_and_a_usable_std() -> None:
    assert z_of(3.0, 1.0, 2.0) == pytest.approx(1.0)
    assert z_of(3.0, None, 2.0) is None and z_of(3.0, 1.0, None) is None
    assert z_of(3.0, 1.0, 0.0) is None and z_of(3.0, 1.0, 1e-13) is None
    assert z_of(float("nan"), 1.0, 2.0) is None and z_of(1.0, 1.0, float("inf")) is None


def test_layer_scales_equal_the_one_unit_figures() -> None:
    """The vectorised scale of a whole layer (analyses, benches) is the one-unit definition, unit by
    unit: percent strictly below the value in float16 precision, z rounded to 3 decimals."""
    rng = np.random.default_rng(3)
    sample = rng.normal(size=(200, 6)).astype(np.float16)
    sample[:, 4] = 0.25  # a constant unit: no z
    means, stds = sample.astype(np.float64).mean(0), sample.astype(np.float64).std(0)
    values = np.array([0.1234567, -10.0, np.inf, np.nan, 0.25, 70000.0], np.float32)
    pct, zs = layer_scales(sample, means, stds, values)
    for unit, v in enumerate(values.tolist()):
        with np.errstate(over="ignore"):  # 70000 is beyond float16: inf
            v16 = float(np.float32(np.float16(v)))
        expected = None if np.isnan(v) else percentile_of(sample[:, unit], v16)
        assert pct[unit] == expected, unit
        z = z_of(v, means[unit], stds[unit])
        assert zs[unit] == (None if z is None else round(z, 3)), unit
    assert pct[2] == pct[5] == 100.0 and pct[1] == 0.0 and zs[4] is None and zs[3] is None


def test_percentiles_and_analysis_z_use_the_one_definition() -> None:
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(200, 4)).astype(np.float16).astype(np.float32)
    percentiles = Percentiles.from_arrays({"L": sample})
    ctx = SimpleNamespace(percentiles=percentiles)
    moments = UnitMoments()
    for unit in range(4):
        column = sample[:, unit]
        v = float(column[7])  # a dataset image's own value is not below itself
        assert percentiles.of("L", unit, v) == pytest.approx(percentile_of(column, v))
        want = z_of(v, column.astype(np.float64).mean(), column.astype(np.float64).std())
        assert z_score(ctx, "L", unit, v, moments) == pytest.approx(round(want, 3))
    assert moments.of(ctx, "L") is moments.of(ctx, "L")  # computed once per context
    assert z_score(ctx, "missing", 0, 1.0, moments) is None and z_score(ctx, "L", 99, 1.0, moments) is None
    ranked = sorted([{"unit": 1, "percentile": 50.0, "z": 1.0}, {"unit": 2, "percentile": 90.0, "z": 0.1}],
                    key=rank_key("percentile"))  # fmt: skip
    assert [n["unit"] for n in ranked] == [2, 1]
    assert [n["unit"] for n in sorted(ranked, key=rank_key("z"))] == [1, 2]


def _app(version: str) -> SimpleNamespace:
    clock = SimpleNamespace(current=lambda: version)
    return SimpleNamespace(state=SimpleNamespace(data_version=clock))


def test_versioned_cache_is_built_on_app_cache_and_follows_the_data_version() -> None:
    app, other = _app("v1"), _app("v1")
    first = versioned_cache(app, "x", object)
    assert versioned_cache(SimpleNamespace(app=app), "x", object) is first  # a request works too
    assert versioned_cache(other, "x", object) is not first  # per app, never module-global
    assert app_cache(app, "versioned_caches", dict).entries["x"] == ("v1", first)
    app.state.data_version = SimpleNamespace(current=lambda: "v2")
    assert versioned_cache(app, "x", object) is not first


def test_preview_cache_is_per_instance_and_bounded() -> None:
    calls: list[int] = []

    def render() -> bytes:
        calls.append(1)
        return b"png"

    one, two = PreviewCache(items=2), PreviewCache(items=2)
    assert _cached(one, "a", render) == _cached(one, "a", render)
    assert len(calls) == 1
    _cached(two, "a", render)  # another app's cache renders its own
    assert len(calls) == 2
    _cached(one, "b", render), _cached(one, "c", render)
    _cached(one, "a", render)  # evicted (least recently used)
    assert len(calls) == 5
    _cached(None, "a", render)  # no cache: always rendered
    assert len(calls) == 6
