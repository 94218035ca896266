"""``conceptscope eval-search``: does zero-shot neuron search find each concept's own neuron?

For each concept the demo model card names (``eval-demo``: the last-block unit maximising
min(d′ objects, d′ text) on held-out renderings), search the index for the concept word exactly
as ``/search`` does (:mod:`app.live.search`: the word as typed, ranked by evidence, else by
direction score) and record the rank of that unit. Printed: the rank per concept, then

    search top-1 hits: A of N
    search top-5 hits: X of N
    search top-20 hits: B of N

and, measured in the same run as the baseline, the same figures for the direction score alone
(``direction score top-5 hits``), how many nonsense strings the page flags as out of
vocabulary (``nonsense flagged: K of M``), the same search for the concept in a phrase
(``phrase “the word …” top-5 hits``, ``phrase “a photo of a …” top-5 hits``), the page's
confidence against the null (:mod:`app.neurons.calibration`, phrases against their framed null)
for phrases of the demo world
("a photo of a red star") and of things it never saw ("a photo of a dog"): ``world phrases
confident: A of N`` and ``out-of-world phrases flagged: B of M``; and the concept recipes the page
offers (:func:`app.live.search.recipe_fit`: fit better than the null words' 95th percentile):
``concept recipes fitted: C of N`` and ``nonsense recipes refused: D of M``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from app.config import DEFAULT_DATA_DIR, db_url_from_arg
from app.db import make_engine, session_factory
from app.db import search as search_db
from app.db.schema import Model
from app.live import search as live
from app.models import DEMO_WEIGHTS, ModelSpec, load_model
from app.neurons import zeroshot
from app.neurons.calibration import (
    CONFIDENT,
    fit_null,
    framed,
    null_frame,
    null_words,
    out_of_vocabulary,
    recipe_null,
    recipe_refused,
)
from app.neurons.recipes import fit_recipe

MODEL_CARD = DEMO_WEIGHTS.parent / "MODEL_CARD.md"
NONSENSE = ("xqzvbl", "zzqxj", "vbnkqw", "qwfpgj")
TOPS = (1, 5, 20)
WORLD_PHRASES = ("a photo of a red star", "the word blue", "a drawing of a heart", "a green square",
                 "a photo of a purple triangle", "the word circle")  # fmt: skip
PHRASE_FRAMES = ("the word {}", "a photo of a {}")
OUT_OF_WORLD = ("a photo of a dog", "a photo of a cat", "a photo of a bicycle", "an apple",
                "the word kettle", "a drawing of a house")  # fmt: skip


def card_best_units() -> dict[str, int]:
    """concept -> the unit ``eval-demo`` names for it (model card facts), all concepts."""
    match = re.search(r"<!-- facts: (\{.*?\}) -->", MODEL_CARD.read_text(), re.S)
    if match is None:
        raise SystemExit(f"{MODEL_CARD} has no facts block")
    return {c: int(v[0]) for c, v in json.loads(match.group(1))["multimodal_neurons"].items()}


@dataclass
class SearchEval:
    """Rank (1-based) of each concept's unit under the page's ranking and the direction score."""

    layer: str
    ranking: dict[str, str] = field(default_factory=dict)  # concept -> "evidence" | "direction"
    ranks: dict[str, int] = field(default_factory=dict)
    direction_ranks: dict[str, int] = field(default_factory=dict)
    best: dict[str, int] = field(default_factory=dict)
    nonsense_flagged: int = 0
    nonsense: int = 0
    confidence: dict[str, float] = field(default_factory=dict)  # phrase -> confidence vs its null
    phrase_ranks: dict[str, dict[str, int]] = field(default_factory=dict)  # frame -> concept -> rank
    recipe_fit: dict[str, float] = field(default_factory=dict)  # concept word or nonsense -> fit
    recipe_null: dict[str, float] = field(default_factory=dict)  # median, p95, n

    def refused(self, words: tuple[str, ...] | list[str]) -> int:
        return sum(recipe_refused(self.recipe_fit[w], self.recipe_null) for w in words)

    def confident(self, phrases: tuple[str, ...]) -> int:
        return sum(self.confidence[p] >= CONFIDENT for p in phrases)

    def hits(self, top: int, direction: bool = False) -> int:
        ranks = self.direction_ranks if direction else self.ranks
        return sum(r <= top for r in ranks.values())


def _rank(order: np.ndarray, unit: int) -> int:
    where = np.nonzero(order == unit)[0]
    return int(where[0]) + 1 if len(where) else len(order) + 1


def evaluate(url: str, slug: str | None = None, best: dict[str, int] | None = None,
             loaded: Any = None, device: str = "cpu") -> SearchEval:  # fmt: skip
    """Search each concept word of ``best`` (default: the model card's) on the index at ``url``."""
    best = best if best is not None else card_best_units()
    engine = make_engine(url, create=False)
    with session_factory(engine)() as session:
        query = select(Model).order_by(Model.id)
        model = session.scalars(query.where(Model.slug == slug) if slug else query).first()
        if model is None:
            raise SystemExit(f"no model {slug!r} in {url}" if slug else f"no model in {url}")
        dirs = search_db.layer_directions(session, model.id)
        evidence = search_db.search_evidence(session, model.id)
        ids = sorted({i for le in evidence.values() for i in le.image_ids})
        thumbs = search_db.thumbnails(session, ids)
        spec = ModelSpec(model.name, model.pretrained)
    engine.dispose()
    if not dirs:
        raise SystemExit("the index has no neuron directions (run `conceptscope precompute activations`)")
    loaded = loaded or load_model(spec, device)
    name = next(reversed(dirs))  # the last block
    directions = dirs[name]
    good = [i for i in ids if i in thumbs]
    image_emb = dict(zip(good, zeroshot.encode_images(loaded, [thumbs[i] for i in good]), strict=True))
    le = evidence.get(name)
    vocab_emb = zeroshot.encode_texts(loaded, le.concepts) if le is not None else None
    images = live.image_matrix(le.image_ids, image_emb, loaded.embed_dim) if le is not None else None
    out = SearchEval(layer=name, best=dict(best))
    n_units = directions.directions.shape[0]
    framed_vocab: dict[str | None, Any] = {None: vocab_emb}

    def shown_for(query: str) -> tuple[np.ndarray, dict[str, Any]]:
        """The query's embedding and its zero-shot results as /search ranks them (a phrase: the
        vocabulary in its frame, its last word written alone)."""
        embedding = zeroshot.encode_texts(loaded, [query])[0]
        frame = null_frame(query)
        slot = query.split()[-1] if frame else query
        ev = None
        if le is not None:
            if frame not in framed_vocab:
                framed_vocab[frame] = zeroshot.encode_texts(loaded, framed(frame, le.concepts))
            response = live.written_responses(loaded, [name], slot)[name]
            ev = live.layer_evidence(slot, le, embedding, framed_vocab[frame], images, response)
        return embedding, live.rank_layer(name, directions, embedding, n_units, ev)

    for concept, unit in best.items():
        embedding, shown = shown_for(concept)
        out.ranking[concept] = shown["ranking"]
        out.ranks[concept] = _rank(np.array([n["unit"] for n in shown["neurons"]]), unit)
        plain = live.rank_layer(name, directions, embedding, n_units, None)
        out.direction_ranks[concept] = _rank(np.array([n["unit"] for n in plain["neurons"]]), unit)
        for frame in PHRASE_FRAMES:
            _, shown = shown_for(frame.format(concept))
            out.phrase_ranks.setdefault(frame, {})[concept] = _rank(
                np.array([n["unit"] for n in shown["neurons"]]), unit
            )
    out.nonsense = len(NONSENSE)
    out.nonsense_flagged = sum(bool(out_of_vocabulary(loaded.tokenizer, w)) for w in NONSENSE)
    nulls: dict[str | None, Any] = {}
    for phrase in (*WORLD_PHRASES, *OUT_OF_WORLD):
        frame = null_frame(phrase)
        if frame not in nulls:
            emb = zeroshot.encode_texts(loaded, framed(frame, null_words()))
            nulls[frame] = fit_null((emb @ directions.directions.T) * directions.scale)
        scores = (directions.directions @ zeroshot.encode_texts(loaded, [phrase])[0]) * directions.scale
        out.confidence[phrase] = nulls[frame].query_confidence(scores)
    recipe_layer = next(iter(dirs.values())).directions  # the page's recipe layer
    out.recipe_null = recipe_null([fit_recipe(e, recipe_layer).cosine
                                   for e in zeroshot.encode_texts(loaded, null_words())])  # fmt: skip
    for word in (*best, *NONSENSE):
        out.recipe_fit[word] = fit_recipe(zeroshot.encode_texts(loaded, [word])[0], recipe_layer).cosine
    return out


def format_report(r: SearchEval) -> str:
    """The text ``eval-search`` prints (the figures last)."""
    n = len(r.ranks)
    lines = [f"zero-shot search for each concept word, layer {r.layer}; rank of the unit eval-demo names",
             "  concept    unit  rank  (direction score rank)  ranking"]  # fmt: skip
    for c, rank in r.ranks.items():
        d = r.direction_ranks[c]
        lines.append(f"  {c:<9} {r.best[c]:5d} {rank:5d}  ({d:5d})               {r.ranking[c]}")
    lines.append("")
    for top in TOPS:
        lines.append(f"direction score top-{top} hits: {r.hits(top, direction=True)} of {n}")
    lines.append(f"nonsense flagged: {r.nonsense_flagged} of {r.nonsense}")
    lines.append("confidence against the null (phrases: the null words in the phrase's frame)")
    lines += [f"  {p:<30} {r.confidence[p]:.3f}" for p in (*WORLD_PHRASES, *OUT_OF_WORLD)]
    lines.append(f"world phrases confident: {r.confident(WORLD_PHRASES)} of {len(WORLD_PHRASES)}")
    lines.append(f"out-of-world phrases flagged: {len(OUT_OF_WORLD) - r.confident(OUT_OF_WORLD)} of "
                 f"{len(OUT_OF_WORLD)}")  # fmt: skip
    lines.append(f"recipe fits (null: median {r.recipe_null['median']:.3f}, 95th percentile "
                 f"{r.recipe_null['p95']:.3f} over {r.recipe_null['n']} words)")  # fmt: skip
    lines += [f"  {w:<10} {fit:.3f}{'  refused' if recipe_refused(fit, r.recipe_null) else ''}"
              for w, fit in r.recipe_fit.items()]  # fmt: skip
    for frame, ranks in r.phrase_ranks.items():
        lines.append(f"phrase “{frame.format('…')}” top-5 hits: {sum(k <= 5 for k in ranks.values())} of {n}")
    lines.append(f"concept recipes fitted: {n - r.refused(list(r.ranks))} of {n}")
    lines.append(f"nonsense recipes refused: {r.refused(NONSENSE)} of {len(NONSENSE)}")
    for top in TOPS:
        lines.append(f"search top-{top} hits: {r.hits(top)} of {n}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope eval-search``."""
    parser.add_argument("--db", default=str(DEFAULT_DATA_DIR / "demo.db"), help="index (%(default)s)")
    parser.add_argument("--model", default=None, help="model slug (default: the first)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope eval-search``."""
    import torch

    torch.set_num_threads(args.threads)
    print(format_report(evaluate(db_url_from_arg(args.db), args.model)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m precompute.eval_search``."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
