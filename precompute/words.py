"""``conceptscope precompute words``: text feature visualization (each neuron's top rendered words).

Every word of a vocabulary is written as an image of text (:func:`app.neurons.render.render_text`,
dark ink on white, at the model's input size) and run through the model; a neuron's response is
its value on the image (spatial max of its map, as everywhere in Conceptscope). The ``--top``
words per neuron are stored in ``neuron_words`` with their values.

Default vocabulary: the whole-word entries (``...</w>``) of open_clip's bundled BPE vocabulary
that are alphabetic and at least 3 letters, the ~10,000 most frequent (merge order is frequency
order), plus the demo concepts for the demo model. ``--vocab FILE`` (one word or phrase a line)
replaces it. Resumable: the running top-N is checkpointed in the ``runs`` row; a finished run
with the same parameters is a no-op. Under ``torchrun`` each rank renders every N-th chunk of the
vocabulary (checkpointed in its own part row) and rank 0 merges the ranks' top words exactly
(value descending, ties to the earlier word) and writes them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import delete, insert, select
from tqdm import tqdm

from app.config import DEFAULT_DATA_DIR, db_url_from_arg
from app.db import make_engine, session_factory
from app.db.schema import Neuron, NeuronWord
from app.models import LoadedModel, ModelSpec, load_model, mean_std
from app.neurons.capture import run_visual, spatial_maps
from app.neurons.vocabulary import DEFAULT_VOCAB_SIZE, bpe_words
from precompute import distributed
from precompute.runs import checkpoint_run, drop_parts, finish_run, params_hash, start_distributed_run

STAGE = "words"
DEFAULT_TOP = 20
DEFAULT_BATCH = 128
CHECKPOINT_SECONDS = 20.0


@dataclass
class WordsReport:
    model: str
    status: str  # done | already-done | interrupted
    n_words: int
    seconds: float


def read_vocab(path: str | Path) -> list[str]:
    """One word or phrase a line; blank lines and ``#`` comments skipped; duplicates dropped."""
    text = Path(path).read_text(encoding="utf-8")
    words = [" ".join(line.split()) for line in text.splitlines()]
    return list(dict.fromkeys(w for w in words if w and not w.startswith("#")))


def default_vocabulary(is_demo: bool, limit: int = DEFAULT_VOCAB_SIZE) -> list[str]:
    """BPE whole words, plus the demo world's concepts for the demo model."""
    words = bpe_words(limit)
    if is_demo:
        from precompute.demo_world import CONCEPTS

        words = list(dict.fromkeys([*words, *CONCEPTS]))
    return words


def render_batch(loaded: LoadedModel, words: Sequence[str]) -> torch.Tensor:
    """Words → normalised image batch ``(B, 3, S, S)`` on the model's device (already at size S)."""
    from app.neurons.render import render_text

    size = loaded.image_size
    pixels = np.stack([np.asarray(render_text(w, size), dtype=np.uint8) for w in words])
    images = torch.from_numpy(pixels).to(loaded.device).permute(0, 3, 1, 2).float() / 255.0
    mean, std = (torch.tensor(v, dtype=torch.float32, device=loaded.device).view(1, 3, 1, 1)
                 for v in mean_std(loaded.model))  # fmt: skip
    return (images - mean) / std  # the model's own preprocess normalisation


def word_values(loaded: LoadedModel, words: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each indexed layer's neuron values ``(len(words), units)`` on the rendered words."""
    images = render_batch(loaded, words)
    with torch.inference_mode():
        raw = run_visual(loaded.visual, images, loaded.layers)
    return {
        layer.name: spatial_maps(raw[layer.name], layer).amax(dim=(-2, -1)).float().cpu()
        for layer in loaded.layers
    }


class TopWords:
    """Running top-``k`` words per unit for each layer (values and word indices)."""

    def __init__(self, units: dict[str, int], k: int) -> None:
        self.k = k
        self.values = {name: torch.full((0, n), -float("inf")) for name, n in units.items()}
        self.indices = {name: torch.zeros((0, n), dtype=torch.int64) for name, n in units.items()}
        self.position = 0

    def merge(self, values: dict[str, torch.Tensor], start: int) -> None:
        for name, v in values.items():
            idx = torch.arange(start, start + v.shape[0])[:, None].expand_as(v)
            all_v = torch.cat([self.values[name], v])
            all_i = torch.cat([self.indices[name], idx])
            # ties: keep the earlier (more frequent) word; stable sort on -value
            order = torch.sort(-all_v, dim=0, stable=True).indices[: self.k]
            self.values[name] = torch.gather(all_v, 0, order)
            self.indices[name] = torch.gather(all_i, 0, order)
        self.position = start + next(iter(values.values())).shape[0]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {f"v:{n}": t.numpy() for n, t in self.values.items()}
        arrays |= {f"i:{n}": t.numpy() for n, t in self.indices.items()}
        np.savez(buffer, position=np.array(self.position), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, units: dict[str, int], k: int) -> TopWords:
        state = cls(units, k)
        with np.load(io.BytesIO(data)) as arrays:
            state.position = int(arrays["position"])
            for name in units:
                state.values[name] = torch.from_numpy(arrays[f"v:{name}"].copy())
                state.indices[name] = torch.from_numpy(arrays[f"i:{name}"].copy())
        return state


def merge_top_words(states: list[TopWords], k: int) -> TopWords:
    """The ranks' top words merged exactly: value descending, ties to the earlier word."""
    merged = TopWords({name: v.shape[1] for name, v in states[0].values.items()}, k)
    for name in merged.values:
        values, indices, _ = distributed.merge_topk(
            [s.values[name].T for s in states],
            [s.indices[name].T for s in states],
            [s.indices[name].T for s in states],
            k,
        )
        n = min(k, values.shape[1])
        merged.values[name] = values[:, :n].T.contiguous()
        merged.indices[name] = indices[:, :n].T.contiguous()
    return merged


def run_words(
    db_url: str,
    *,
    model: str | None = None,
    loaded: LoadedModel | None = None,
    vocab: Sequence[str] | None = None,
    top: int = DEFAULT_TOP,
    batch: int = DEFAULT_BATCH,
    device: str = "auto",
    progress: bool = True,
    stop_after_batches: int | None = None,
) -> WordsReport:
    """Render ``vocab`` (default: :func:`default_vocabulary`) and store each neuron's top words."""
    from precompute.featurevis import pick_model

    started = time.perf_counter()
    ctx = distributed.context()
    if ctx.distributed and stop_after_batches is not None:
        raise ValueError("stop_after_batches is not supported under torchrun (kill the job instead)")
    progress = progress and ctx.is_writer
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    try:
        with sessions() as session:
            model_row = pick_model(session, model if loaded is None else loaded.spec.slug)
            layer_rows = {row.name: (row.id, row.n_units) for row in model_row.layers}
        if loaded is None:
            device = distributed.device_for(ctx, device)
            loaded = load_model(ModelSpec(model_row.name, model_row.pretrained), device)
        words = list(vocab) if vocab is not None else default_vocabulary(loaded.spec.is_demo)
        if not words:
            raise ValueError("the vocabulary is empty")
        layers = [layer for layer in loaded.layers if layer.name in layer_rows]
        units = {layer.name: layer.n_units for layer in layers}
        params = {
            "model": model_row.slug,
            "vocab_sha256": hashlib.sha256("\n".join(words).encode()).hexdigest(),
            "n_words": len(words),
            "top": top,
            "layers": list(units),
            "renderer": "app.neurons.render.render_text",
        }
        model_id = model_row.id
        started_run = start_distributed_run(
            sessions, ctx, lambda _: model_id, STAGE, params, {"position": 0, "n_words": len(words)}
        )
        run_id, status, part_id, saved = (
            started_run.run_id, started_run.status, started_run.part_id, started_run.state
        )  # fmt: skip
        if status == "done":
            return WordsReport(model_row.slug, "already-done", len(words), time.perf_counter() - started)

        state = TopWords.from_bytes(saved, units, top) if saved else TopWords(units, top)
        chunks = distributed.my_share(list(range(0, len(words), batch)), ctx)
        if ctx.distributed:  # a fixed grid of chunks, every N-th one
            todo = [start for start in chunks if start >= state.position]
        else:  # resume where the checkpoint stopped (whatever the batch size was then)
            todo = chunks = list(range(state.position, len(words), batch))
        left = sum(len(words[start : start + batch]) for start in todo)
        mine = sum(len(words[start : start + batch]) for start in chunks) if ctx.distributed else len(words)
        bar = tqdm(
            total=mine,
            initial=mine - left,
            unit="word",
            disable=not progress,
            desc=f"words {model_row.slug}",
            dynamic_ncols=True,
        )
        last = time.monotonic()
        batches = 0
        try:
            for start in todo:
                chunk = words[start : start + batch]
                state.merge({k: v for k, v in word_values(loaded, chunk).items() if k in units}, start)
                bar.update(len(chunk))
                batches += 1
                if stop_after_batches is not None and batches >= stop_after_batches:
                    return WordsReport(
                        model_row.slug, "interrupted", len(words), time.perf_counter() - started
                    )
                if time.monotonic() - last > CHECKPOINT_SECONDS and start != todo[-1]:
                    with sessions.begin() as session:
                        at = {"position": state.position, "n_words": len(words)}
                        checkpoint_run(session, part_id, state.to_bytes(), at)
                    last = time.monotonic()
        finally:
            bar.close()

        if ctx.distributed:  # keep this rank's share, then merge on rank 0
            with sessions.begin() as session:
                checkpoint_run(session, part_id, state.to_bytes(), {"position": state.position})
            states = distributed.gather(state, ctx)
            if states is None:
                distributed.barrier(ctx)
                return WordsReport(model_row.slug, "done", len(words), time.perf_counter() - started)
            state = merge_top_words(states, top)
        with sessions.begin() as session:
            for name, (layer_id, _) in layer_rows.items():
                if name not in units:
                    continue
                neuron_ids = dict(
                    session.execute(select(Neuron.unit, Neuron.id).where(Neuron.layer_id == layer_id)).all()
                )
                session.execute(delete(NeuronWord).where(NeuronWord.neuron_id.in_(list(neuron_ids.values()))))
                values, indices = state.values[name], state.indices[name]
                rows = [
                    {
                        "neuron_id": neuron_ids[unit],
                        "rank": rank,
                        "word": words[int(indices[rank, unit])],
                        "value": float(values[rank, unit]),
                    }
                    for unit in range(values.shape[1])
                    if unit in neuron_ids
                    for rank in range(values.shape[0])
                ]
                if rows:
                    session.execute(insert(NeuronWord), rows)
            finish_run(session, run_id, {"position": len(words), "n_words": len(words)})
            if ctx.distributed:
                drop_parts(session, model_id, STAGE, params_hash(params))
        distributed.barrier(ctx)
        return WordsReport(model_row.slug, "done", len(words), time.perf_counter() - started)
    finally:
        engine.dispose()


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=str(DEFAULT_DATA_DIR / "demo.db"), help="database file or URL")
    parser.add_argument("--model", default=None, help="model slug in the DB (default: its only model)")
    parser.add_argument(
        "--vocab",
        default=None,
        help="vocabulary file, one word or phrase a line (default: ~10k BPE whole words)",
    )
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="words kept per neuron")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="words per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        vocab = read_vocab(args.vocab) if args.vocab else None
        if args.top < 1 or args.batch < 1:
            raise ValueError("--top and --batch must be at least 1")
        report = run_words(
            db_url_from_arg(args.db),
            model=args.model,
            vocab=vocab,
            top=args.top,
            batch=args.batch,
            device=args.device,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 2
    if not distributed.env_context().is_writer:  # rank 0 reports for the whole job
        return 0
    if report.status == "already-done":
        print(f"{report.model}: top words already computed for this vocabulary ({report.n_words} words)")
    else:
        print(
            f"{report.model}: top {args.top} of {report.n_words} rendered words per neuron "
            f"in {report.seconds:.1f}s"
        )
    return 0
