"""Compare two index databases unit by unit (e.g. a sharded torchrun run into PostgreSQL against
the one-process SQLite demo index).

    .venv/bin/python bench/compare_indexes.py A B [--rtol 1e-4] [--atol 1e-5] [--skip featurevis]

``A`` and ``B`` are file paths or SQLAlchemy URLs. Units are matched by (model slug, layer name,
unit) and images by content (the SHA-256 of their thumbnail), so two indexes whose row ids differ
(another database, another insertion order) still compare. Sections:

* ``images``: the same thumbnails, captions and demo ground truth;
* ``topk``: per unit the same top-k images in the same order (ids), values and heatmaps within
  tolerance;
* ``stats``: mean, std, max per unit within tolerance; ``sample``: the activation sample's images
  and values; ``directions``;
* ``words``: per unit the same top words in order, values within tolerance;
* ``labels``: the same labels (text, source, rank; score within 0.001), ``evidence``,
  ``multimodality`` (unit scores and concepts), ``profiles`` (concept profiles per layer);
* ``featurevis``: the same (kind, index) images per unit, byte for byte.

Prints one line per section (compared, differing, largest difference) with the first few
differences, and last ``indexes equal: yes|no (...)``. Exit status 0 when equal, 1 when not,
2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import inspect, select  # noqa: E402

from app.config import db_url_from_arg  # noqa: E402
from app.db import from_bytes, make_engine, session_factory  # noqa: E402
from app.db.schema import (  # noqa: E402
    ActivationSample,
    ConceptProfile,
    Direction,
    FeatureVisualization,
    Image,
    Label,
    LabelEvidence,
    Layer,
    Model,
    Neuron,
    NeuronWord,
    TopExample,
    UnitMultimodality,
)

SECTIONS = ("images", "topk", "stats", "sample", "directions", "words", "labels", "evidence",
            "multimodality", "profiles", "featurevis")  # fmt: skip
SHOW = 5  # differences printed per section
LABEL_ATOL = 1e-3  # label scores and evidence are stored rounded to 4 decimals


@dataclass
class Section:
    """The outcome of one section."""

    name: str
    compared: int = 0
    differing: int = 0
    max_diff: float = 0.0
    examples: list[str] = field(default_factory=list)
    absent: str | None = None  # "A" / "B": no rows on that side while the other has some

    def differ(self, what: str) -> None:
        self.differing += 1
        if len(self.examples) < SHOW:
            self.examples.append(what)

    def gap(self, a: Any, b: Any) -> float:
        """Largest |a - b| (NaN on both sides counts equal; NaN on one side is infinite)."""
        x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if x.shape != y.shape:
            return float("inf")
        both = np.isnan(x) & np.isnan(y)
        d = np.where(both, 0.0, np.abs(x - y))
        d = np.where(np.isnan(d), np.inf, d)
        worst = float(d.max()) if d.size else 0.0
        self.max_diff = max(self.max_diff, worst)
        return worst

    @property
    def equal(self) -> bool:
        return self.differing == 0 and self.absent is None

    def line(self) -> str:
        if self.absent:
            return f"{self.name}: absent in {self.absent}"
        text = f"{self.name}: {self.compared} compared, {self.differing} differ"
        return text + (f" (max |diff| {self.max_diff:.3g})" if self.max_diff else "")


def _close(s: Section, a: Any, b: Any, rtol: float, atol: float) -> bool:
    """Within ``atol + rtol * |b|`` everywhere (records the largest difference)."""
    if a is None or b is None:
        return a is None and b is None
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        return False
    s.gap(x, y)
    both = np.isnan(x) & np.isnan(y)
    ok = both | (np.abs(x - y) <= atol + rtol * np.abs(y))
    return bool(ok.all())


class Index:
    """One index database, read into plain Python for comparison."""

    def __init__(self, arg: str) -> None:
        self.url = db_url_from_arg(arg)
        if self.url.startswith("sqlite:///") and not Path(self.url.removeprefix("sqlite:///")).exists():
            raise FileNotFoundError(f"no such index: {arg}")
        self.engine = make_engine(self.url, create=False)
        self.session = session_factory(self.engine)()
        self.tables = set(inspect(self.engine).get_table_names())
        self.layers = {
            (slug, name): (lid, gh, gw)
            for lid, slug, name, gh, gw in self.session.execute(
                select(Layer.id, Model.slug, Layer.name, Layer.grid_h, Layer.grid_w).join(Model)
            )
        }
        self.layer_key = {lid: key for key, (lid, _, _) in self.layers.items()}
        self.grid = {lid: (gh, gw) for lid, gh, gw in self.layers.values()}
        self.unit_of: dict[int, tuple[str, str, int]] = {}
        for nid, lid, unit in self.session.execute(select(Neuron.id, Neuron.layer_id, Neuron.unit)):
            self.unit_of[nid] = (*self.layer_key[lid], unit)
        self.sha_of: dict[int, str] = dict(self.session.execute(select(Image.id, Image.thumb_sha256)).all())

    def rows(self, query: Any) -> Iterable[Any]:
        """The rows of ``query``; none when one of its tables is missing (an older schema)."""
        if {c.table.name for c in query.selected_columns if hasattr(c, "table")} - self.tables:
            return []
        return self.session.execute(query)

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()


def _per_unit(index: Index, query: Any) -> dict[tuple[str, str, int], list[Any]]:
    out: dict[tuple[str, str, int], list[Any]] = defaultdict(list)
    for row in index.rows(query):
        out[index.unit_of[row[0]]].append(tuple(row[1:]))
    return out


def _keys(s: Section, a: dict, b: dict) -> list[Any]:
    """Keys present on both sides (missing ones counted as differences)."""
    if a and not b:
        s.absent = "B"
    elif b and not a:
        s.absent = "A"
    for key in sorted(set(a) ^ set(b), key=str)[: SHOW if s.absent else None]:
        s.differ(f"{key}: only in {'A' if key in a else 'B'}")
    return sorted(set(a) & set(b), key=str)


def compare_images(a: Index, b: Index) -> Section:
    s = Section("images")
    rows_a = {r[0]: r[1:] for r in a.rows(select(Image.thumb_sha256, Image.caption, Image.meta))}
    rows_b = {r[0]: r[1:] for r in b.rows(select(Image.thumb_sha256, Image.caption, Image.meta))}
    for sha in _keys(s, rows_a, rows_b):
        s.compared += 1
        (cap_a, meta_a), (cap_b, meta_b) = rows_a[sha], rows_b[sha]
        truth_a = {k: v for k, v in (meta_a or {}).items() if k != "key"}  # shards add the source key
        truth_b = {k: v for k, v in (meta_b or {}).items() if k != "key"}
        if cap_a != cap_b or truth_a != truth_b:
            s.differ(f"image {sha[:12]}: caption/meta {cap_a!r}/{truth_a} vs {cap_b!r}/{truth_b}")
    return s


def compare_topk(a: Index, b: Index, rtol: float, atol: float) -> Section:
    s = Section("topk")
    t = TopExample
    q = select(t.neuron_id, t.rank, t.image_id, t.value, t.heatmap)
    ta, tb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, ta, tb):
        s.compared += 1
        ra, rb = sorted(ta[key]), sorted(tb[key])
        ids_a, ids_b = [a.sha_of[r[1]] for r in ra], [b.sha_of[r[1]] for r in rb]
        if ids_a != ids_b:
            first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), None)
            s.differ(f"{key}: top-k images differ (first at rank {first}; {len(ids_a)} vs {len(ids_b)})")
            continue
        if not _close(s, [r[2] for r in ra], [r[2] for r in rb], rtol, atol):
            s.differ(f"{key}: top-k values differ")
            continue
        grid = a.grid[a.layers[key[:2]][0]]
        maps_a = [from_bytes(r[3], "float16", grid) for r in ra]
        maps_b = [from_bytes(r[3], "float16", grid) for r in rb]
        if not _close(s, maps_a, maps_b, max(rtol, 1e-3), max(atol, 1e-3)):  # float16 maps
            s.differ(f"{key}: heatmaps differ")
    return s


def compare_stats(a: Index, b: Index, rtol: float, atol: float) -> Section:
    s = Section("stats")
    q = select(Neuron.id, Neuron.mean, Neuron.std, Neuron.max)
    sa, sb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, sa, sb):
        s.compared += 1
        if not _close(s, sa[key][0], sb[key][0], rtol, atol):
            s.differ(f"{key}: mean/std/max {sa[key][0]} vs {sb[key][0]}")
    return s


def compare_sample(a: Index, b: Index, rtol: float, atol: float) -> Section:
    s = Section("sample")

    def read(index: Index) -> dict[Any, tuple[list[str], np.ndarray]]:
        out = {}
        for row in index.rows(select(ActivationSample)):
            sample = row[0]
            values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units))
            shas = [index.sha_of[int(i)] for i in sample.image_ids]
            order = np.argsort(shas, kind="stable")
            out[index.layer_key[sample.layer_id]] = ([shas[i] for i in order], values[order])
        return out

    ra, rb = read(a), read(b)
    for key in _keys(s, ra, rb):
        s.compared += 1
        if ra[key][0] != rb[key][0]:
            s.differ(f"{key}: sampled images differ")
        elif not _close(s, ra[key][1], rb[key][1], max(rtol, 1e-3), max(atol, 1e-3)):  # float16
            s.differ(f"{key}: sampled values differ")
    return s


def compare_directions(a: Index, b: Index, rtol: float, atol: float) -> Section:
    s = Section("directions")

    def read(index: Index) -> dict[Any, np.ndarray]:
        return {index.layer_key[d.layer_id]: from_bytes(d.values, "float32", (d.n_units, d.embed_dim))
                for (d,) in index.rows(select(Direction))}  # fmt: skip

    da, db = read(a), read(b)
    for key in _keys(s, da, db):
        s.compared += 1
        if not _close(s, da[key], db[key], rtol, atol):
            s.differ(f"{key}: directions differ")
    return s


def compare_words(a: Index, b: Index, rtol: float, atol: float) -> Section:
    s = Section("words")
    q = select(NeuronWord.neuron_id, NeuronWord.rank, NeuronWord.word, NeuronWord.value)
    wa, wb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, wa, wb):
        s.compared += 1
        ra, rb = sorted(wa[key]), sorted(wb[key])
        if [r[1] for r in ra] != [r[1] for r in rb]:
            s.differ(f"{key}: words {[r[1] for r in ra][:3]}... vs {[r[1] for r in rb][:3]}...")
        elif not _close(s, [r[2] for r in ra], [r[2] for r in rb], rtol, atol):
            s.differ(f"{key}: word values differ")
    return s


def compare_labels(a: Index, b: Index) -> Section:
    s = Section("labels")
    q = select(Label.neuron_id, Label.source, Label.rank, Label.label, Label.score)
    la, lb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, la, lb):
        s.compared += 1
        ra, rb = sorted(la[key], key=str), sorted(lb[key], key=str)
        if [r[:3] for r in ra] != [r[:3] for r in rb]:
            s.differ(f"{key}: {[r[2] for r in ra]} vs {[r[2] for r in rb]}")
        elif not _close(s, [r[3] if r[3] is not None else np.nan for r in ra],
                        [r[3] if r[3] is not None else np.nan for r in rb], 0.0, LABEL_ATOL):  # fmt: skip
            s.differ(f"{key}: label scores differ")
    return s


def compare_evidence(a: Index, b: Index) -> Section:
    s = Section("evidence")
    e = LabelEvidence
    q = select(e.neuron_id, e.label, e.n_images, e.n_positive, e.tag_source, e.auc, e.precision, e.p_value)
    ea, eb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, ea, eb):
        s.compared += 1
        ra, rb = sorted(ea[key], key=str), sorted(eb[key], key=str)
        if [r[:4] for r in ra] != [r[:4] for r in rb]:
            s.differ(f"{key}: evidence for {[r[0] for r in ra]} vs {[r[0] for r in rb]}")
            continue
        nums_a = [[np.nan if v is None else v for v in r[4:6]] for r in ra]
        nums_b = [[np.nan if v is None else v for v in r[4:6]] for r in rb]
        p_a = [np.nan if r[6] is None else r[6] for r in ra]
        p_b = [np.nan if r[6] is None else r[6] for r in rb]
        if not (_close(s, nums_a, nums_b, 0.0, LABEL_ATOL) and _close(s, p_a, p_b, 1e-3, 1e-12)):
            s.differ(f"{key}: evidence figures differ")
    return s


def compare_multimodality(a: Index, b: Index) -> Section:
    s = Section("multimodality")
    m = UnitMultimodality
    q = select(m.neuron_id, m.concept, m.score, m.picture_d, m.word_d, m.correlation)
    ma, mb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, ma, mb):
        s.compared += 1
        ra, rb = ma[key][0], mb[key][0]
        if ra[0] != rb[0]:
            s.differ(f"{key}: concept {ra[0]!r} vs {rb[0]!r}")
        elif not _close(s, [np.nan if v is None else v for v in ra[1:]],
                        [np.nan if v is None else v for v in rb[1:]], 0.0, LABEL_ATOL):  # fmt: skip
            s.differ(f"{key}: scores {ra[1:]} vs {rb[1:]}")
    return s


def compare_profiles(a: Index, b: Index) -> Section:
    s = Section("profiles")

    def read(index: Index) -> dict[Any, Any]:
        out = {}
        for (p,) in index.rows(select(ConceptProfile)):
            n = len(p.concepts)
            means = from_bytes(p.image_means, "float32", (n, -1)) if n else np.zeros((0, 0))
            words = from_bytes(p.word_values, "float32", (n, -1)) if n else np.zeros((0, 0))
            tags = sorted((index.sha_of[int(i)], sorted(t)) for i, t in p.image_tags.items())
            key = index.layer_key[p.layer_id]
            blobs = list(p.word_blobs)
            out[key] = (p.source, list(p.concepts), list(p.image_counts), means, words, blobs, tags)
        return out

    pa, pb = read(a), read(b)
    for key in _keys(s, pa, pb):
        s.compared += 1
        x, y = pa[key], pb[key]
        if x[:3] != y[:3] or x[5:] != y[5:]:
            s.differ(f"{key}: source/concepts/counts/word renderings/image tags differ")
        elif not (_close(s, x[3], y[3], 1e-4, 1e-5) and _close(s, x[4], y[4], 1e-4, 1e-5)):
            s.differ(f"{key}: concept means differ")
    return s


def compare_featurevis(a: Index, b: Index, rtol: float, atol: float) -> Section:
    s = Section("featurevis")
    q = select(FeatureVisualization.neuron_id, FeatureVisualization.kind, FeatureVisualization.index,
               FeatureVisualization.blob_sha256, FeatureVisualization.objective)  # fmt: skip
    fa, fb = _per_unit(a, q), _per_unit(b, q)
    for key in _keys(s, fa, fb):
        s.compared += 1
        ra, rb = sorted(fa[key]), sorted(fb[key])
        if [r[:2] for r in ra] != [r[:2] for r in rb]:
            s.differ(f"{key}: kinds {[r[:2] for r in ra]} vs {[r[:2] for r in rb]}")
        elif [r[2] for r in ra] != [r[2] for r in rb]:
            s.differ(f"{key}: images differ ({sum(x[2] != y[2] for x, y in zip(ra, rb, strict=True))} of "
                     f"{len(ra)})")  # fmt: skip
        elif not _close(s, [r[3] for r in ra], [r[3] for r in rb], rtol, atol):
            s.differ(f"{key}: objectives differ")
    return s


def compare(a: Index, b: Index, rtol: float, atol: float, skip: set[str]) -> list[Section]:
    """Every section not in ``skip``."""
    runs = {
        "images": lambda: compare_images(a, b),
        "topk": lambda: compare_topk(a, b, rtol, atol),
        "stats": lambda: compare_stats(a, b, rtol, atol),
        "sample": lambda: compare_sample(a, b, rtol, atol),
        "directions": lambda: compare_directions(a, b, rtol, atol),
        "words": lambda: compare_words(a, b, rtol, atol),
        "labels": lambda: compare_labels(a, b),
        "evidence": lambda: compare_evidence(a, b),
        "multimodality": lambda: compare_multimodality(a, b),
        "profiles": lambda: compare_profiles(a, b),
        "featurevis": lambda: compare_featurevis(a, b, rtol, atol),
    }
    return [runs[name]() for name in SECTIONS if name not in skip]


def summary(sections: list[Section], skip: set[str]) -> str:
    """The last line: ``indexes equal: yes|no (...)``."""
    bad = [s for s in sections if not s.equal]
    units = max((s.compared for s in sections if s.name == "stats"), default=0)
    skipped = f"; skipped: {', '.join(sorted(skip))}" if skip else ""
    if not bad:
        return f"indexes equal: yes ({units} units, {len(sections)} sections{skipped})"
    what = ", ".join(f"{s.name} {'absent in ' + s.absent if s.absent else f'{s.differing}/{s.compared}'}"
                     for s in bad)  # fmt: skip
    return f"indexes equal: no ({what}{skipped})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="index A (file path or SQLAlchemy URL)")
    parser.add_argument("b", help="index B (file path or SQLAlchemy URL)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of float values")
    parser.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of float values")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections left out")
    args = parser.parse_args(argv)
    try:
        a, b = Index(args.a), Index(args.b)
    except (OSError, ValueError) as exc:
        print(f"compare_indexes: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"A: {a.url.split('?')[0]}\nB: {b.url.split('?')[0]}")
        sections = compare(a, b, args.rtol, args.atol, set(args.skip))
    finally:
        a.close()
        b.close()
    for s in sections:
        print(s.line())
        for example in s.examples:
            print(f"  {example}")
    line = summary(sections, set(args.skip))
    print(line)
    return 0 if line.startswith("indexes equal: yes") else 1


if __name__ == "__main__":
    sys.exit(main())
