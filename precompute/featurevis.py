"""``conceptscope precompute featurevis``: feature visualizations for every indexed neuron.

For each neuron of the DB's model: a positive image (maximise its objective) and a negative one
(minimise it); for the last block also a diversity set of ``--diversity`` images, optimised jointly
with a diversity term and then measured (each diversity image's row stores, in its settings, its
distance to the others and whether it nearly duplicates an earlier one; the page hides those).
Many neurons share one optimisation batch (:func:`app.neurons.featurevis.render`). Images are
stored as PNG blobs with a ``feature_visualizations`` row (objective reached, settings).
Resumable and idempotent: neurons whose visualizations are stored are skipped, every batch is
committed on its own, and a diversity set made by another method
(:data:`app.neurons.featurevis.DIVERSITY_METHOD`, stored with each image) is rendered again.
The stage follows the protocol of :mod:`precompute.runs`: one ``runs`` row per model and
parameters (:func:`run_params`), checkpointed with each stored batch (its progress counts the
complete neurons; the stored images are the resumable state) and finished when every requested
neuron is complete, which changes the index's data version.

Under ``torchrun`` the optimisation batches are dealt out round by round (batch ``i`` to rank
``i % N``); rank 0 gathers each round's images and writes them, so what is stored is always a
prefix of the batch list and a restarted job resumes where it stopped. Rank 0 alone writes the
``runs`` row.

Defaults depend on the device (:func:`app.neurons.featurevis.default_settings`): on a GPU
Lucid's 512 steps at the model's input size; on a CPU fewer steps at half the input size, a
budget that keeps the ``conceptscope demo`` build short.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from tqdm import tqdm

from app.config import DEFAULT_DATA_DIR, db_url_from_arg
from app.db import make_engine, session_factory
from app.db.schema import FeatureVisualization, Layer, Model, Neuron
from app.db.visualizations import save_visualization
from app.models import LoadedModel, ModelSpec, load_model
from app.neurons import featurevis as fv
from precompute import distributed
from precompute.runs import checkpoint_run, finish_run, start_run

STAGE = "featurevis"
CPU_STEPS = fv.CPU_STEPS
GPU_STEPS = fv.GPU_STEPS
CPU_BATCH = 64
GPU_BATCH = 256
DEFAULT_DIVERSITY = 4
KINDS = ("positive", "negative", "diversity")


@dataclass
class Job:
    """The images of one (neuron, kind): 1, or ``diversity`` images sharing a group."""

    neuron_id: int
    unit: int
    kind: str
    count: int

    @property
    def sign(self) -> int:
        return -1 if self.kind == "negative" else 1


@dataclass
class FeatureVisReport:
    model: str
    n_images: int
    n_skipped_neurons: int
    seconds: float


def parse_units(text: str | None) -> set[int] | None:
    """``"0-31,40"`` → ``{0, ..., 31, 40}``; ``None`` → all units."""
    if not text:
        return None
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            units.update(range(int(lo), int(hi) + 1))
        else:
            units.add(int(part))
    return units


def pick_model(session: object, slug: str | None) -> Model:
    """The DB's model called ``slug``, or its only model."""
    models = list(session.scalars(select(Model).order_by(Model.id)))  # type: ignore[attr-defined]
    if slug:
        for model in models:
            if model.slug == slug:
                return model
        raise ValueError(f"model {slug!r} is not in the database (have: {', '.join(m.slug for m in models)})")
    if not models:
        raise ValueError("the database has no model yet: run `conceptscope precompute activations` first")
    if len(models) > 1:
        raise ValueError(
            f"the database has several models; pick one with --model ({', '.join(m.slug for m in models)})"
        )
    return models[0]


def plan_jobs(
    session: object, layer: Layer, units: set[int] | None, kinds: Sequence[str], diversity: int
) -> tuple[list[Job], int]:
    """Jobs still to do for ``layer`` and the number of neurons already complete."""
    neurons = list(
        session.scalars(  # type: ignore[attr-defined]
            select(Neuron).where(Neuron.layer_id == layer.id).order_by(Neuron.unit)
        )
    )
    have: dict[tuple[int, str], int] = {}
    rows = session.execute(  # type: ignore[attr-defined]
        select(FeatureVisualization.neuron_id, FeatureVisualization.kind, FeatureVisualization.settings)
        .join(Neuron, Neuron.id == FeatureVisualization.neuron_id)
        .where(Neuron.layer_id == layer.id)
    )
    for neuron_id, kind, settings in rows:
        if kind == "diversity" and (settings or {}).get("diversity_method") != fv.DIVERSITY_METHOD:
            continue  # made by another method: render the set again (the rows are replaced)
        have[(neuron_id, kind)] = have.get((neuron_id, kind), 0) + 1
    jobs, complete = [], 0
    for neuron in neurons:
        if units is not None and neuron.unit not in units:
            continue
        todo = []
        for kind in kinds:
            count = diversity if kind == "diversity" else 1
            if kind == "diversity" and (not layer.is_last or diversity < 2):
                continue
            if have.get((neuron.id, kind), 0) < count:
                todo.append(Job(neuron.id, neuron.unit, kind, count))
        if todo:
            jobs.extend(todo)
        else:
            complete += 1
    return jobs, complete


def pack(jobs: list[Job], batch: int) -> list[list[Job]]:
    """Greedy batches of at most ``batch`` images; a job's images never straddle batches."""
    batches: list[list[Job]] = []
    current: list[Job] = []
    size = 0
    for job in jobs:
        if current and size + job.count > batch:
            batches.append(current)
            current, size = [], 0
        current.append(job)
        size += job.count
    if current:
        batches.append(current)
    return batches


def run_params(
    model: Model,
    layers: Sequence[Layer],
    units: set[int] | None,
    kinds: Sequence[str],
    diversity: int,
    steps: int | None,
    size: int | None,
    seed: int,
) -> dict[str, Any]:
    """The stage's parameters (its ``runs`` row): what is rendered, and how as requested
    (``steps``/``size`` ``None``: the device's default, :func:`app.neurons.featurevis.default_settings`).
    Batch size and device are performance knobs, not parameters."""
    return {
        "model": model.slug,
        "layers": [layer.name for layer in layers],
        "units": sorted(units) if units is not None else None,
        "kinds": sorted(set(kinds)),
        "diversity": diversity if "diversity" in kinds and diversity >= 2 else 0,
        "diversity_method": fv.DIVERSITY_METHOD,
        "algorithm": fv.ALGORITHM,
        "steps": steps,
        "size": size,
        "seed": seed,
    }


def render_batch(
    loaded: LoadedModel, layer_name: str, jobs: list[Job], settings: fv.RenderSettings,
    progress: object = None,
) -> fv.Result:
    """One optimisation for a batch of jobs (diversity groups get the Gram penalty)."""
    units, signs, groups = [], [], []
    for g, job in enumerate(jobs):
        units += [job.unit] * job.count
        signs += [job.sign] * job.count
        groups += [g] * job.count
    has_groups = any(job.count > 1 for job in jobs)
    return fv.render(
        loaded,
        layer_name,
        units,
        signs=signs,
        groups=groups if has_groups else None,
        settings=settings,
        progress=progress,
    )  # type: ignore[arg-type]


def diversity_fields(result: fv.Result, i: int) -> dict[str, object]:
    """What image ``i``'s row stores about its diversity set (empty for a single image)."""
    report = result.diversity[i] if i < len(result.diversity) else None
    return {"diversity": report} if report else {}


def run_featurevis(
    db_url: str,
    *,
    model: str | None = None,
    loaded: LoadedModel | None = None,
    layers: Sequence[str] | None = None,
    units: set[int] | None = None,
    kinds: Sequence[str] = KINDS,
    steps: int | None = None,
    size: int | None = None,
    batch: int | None = None,
    diversity: int = DEFAULT_DIVERSITY,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    stop_after_batches: int | None = None,
) -> FeatureVisReport:
    """Render and store the missing visualizations of the DB's model (see module docstring)."""
    started = time.perf_counter()
    ctx = distributed.context()
    progress = progress and ctx.is_writer
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    with sessions() as session:
        model_row = pick_model(session, model if loaded is None else loaded.spec.slug)
        layer_rows = [row for row in model_row.layers if not layers or row.name in layers]
        if layers and len(layer_rows) != len(set(layers)):
            known = ", ".join(row.name for row in model_row.layers)
            raise ValueError(f"unknown layer in {list(layers)} (indexed layers: {known})")
        plans = [(row, *plan_jobs(session, row, units, kinds, diversity)) for row in layer_rows]
        params = run_params(model_row, layer_rows, units, kinds, diversity, steps, size, seed)
    distributed.barrier(ctx)  # every rank planned from the same rows before anything is written
    n_images = sum(job.count for _, jobs, _ in plans for job in jobs)
    n_complete = sum(done for *_, done in plans)
    left = Counter(job.neuron_id for _, jobs, _ in plans for job in jobs)  # jobs left per neuron
    n_neurons = n_complete + len(left)

    def neurons_progress() -> dict[str, int]:
        return {"neurons_done": n_complete + sum(1 for n in left.values() if n == 0), "neurons": n_neurons}

    if n_images == 0:
        if ctx.is_writer:  # everything is stored: the run is done (a no-op when it was already)
            with sessions.begin() as session:
                run_row = start_run(session, model_row.id, STAGE, params, neurons_progress())
                if run_row.status != "done":
                    finish_run(session, run_row, neurons_progress())
        engine.dispose()
        return FeatureVisReport(model_row.slug, 0, n_complete, time.perf_counter() - started)

    if loaded is None:
        device = distributed.device_for(ctx, device)
        loaded = load_model(ModelSpec(model_row.name, model_row.pretrained), device)
    on_gpu = loaded.device.type == "cuda"
    settings = fv.default_settings(loaded, steps=steps, size=size, seed=seed)
    batch = batch or (GPU_BATCH if on_gpu else CPU_BATCH)
    if diversity >= 2 and batch < diversity:
        raise ValueError(f"--batch ({batch}) must be at least --diversity ({diversity})")
    run_id = None
    if ctx.is_writer:  # rank 0 alone keeps the stage's row (the stored images are its state)
        with sessions.begin() as session:
            run_id = start_run(session, model_row.id, STAGE, params, neurons_progress()).id

    done_batches = 0
    bar = tqdm(
        total=n_images * settings.steps,
        unit="step",
        unit_scale=False,
        disable=not progress,
        desc=f"featurevis {model_row.slug}",
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}",
    )
    stored = 0
    batches = [(row.name, batch_jobs) for row, jobs, _ in plans for batch_jobs in pack(jobs, batch)]
    try:
        for first in range(0, len(batches), ctx.world):
            index = first + ctx.rank
            result = None
            if index < len(batches):
                layer_name, batch_jobs = batches[index]
                n = sum(job.count for job in batch_jobs)
                bar.set_postfix_str(f"{layer_name}: {stored}/{n_images} images", refresh=False)

                def tick(step: int, n: int = n) -> None:
                    bar.update(n)

                result = render_batch(loaded, layer_name, batch_jobs, settings, tick)
            results = distributed.gather((index, result), ctx)
            for index, result in results or []:
                if result is None:
                    continue
                batch_jobs = batches[index][1]
                n = sum(job.count for job in batch_jobs)
                if index != first:
                    bar.update(n * settings.steps)
                with sessions.begin() as session:
                    i = 0
                    for job in batch_jobs:
                        for image in range(job.count):
                            extra = {"batch": n, **diversity_fields(result, i)}
                            save_visualization(
                                session, job.neuron_id, job.kind, image, result, i, extra=extra
                            )
                            i += 1
                        if job.kind == "diversity":  # a larger set made earlier: drop its extra rows
                            session.execute(delete(FeatureVisualization).where(
                                FeatureVisualization.neuron_id == job.neuron_id,
                                FeatureVisualization.kind == "diversity",
                                FeatureVisualization.index >= job.count,
                            ))  # fmt: skip
                        left[job.neuron_id] -= 1
                    if run_id is not None:  # with the images, in their transaction
                        checkpoint_run(session, run_id, None, neurons_progress())
                stored += n
            done_batches += 1
            if stop_after_batches is not None and done_batches >= stop_after_batches:
                return FeatureVisReport(model_row.slug, stored, n_complete, time.perf_counter() - started)
        if run_id is not None:
            with sessions.begin() as session:
                finish_run(session, run_id, neurons_progress())
        distributed.barrier(ctx)
    finally:
        bar.close()
        engine.dispose()
    return FeatureVisReport(model_row.slug, stored, n_complete, time.perf_counter() - started)


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=str(DEFAULT_DATA_DIR / "demo.db"), help="database file or URL")
    parser.add_argument("--model", default=None, help="model slug in the DB (default: its only model)")
    parser.add_argument("--layers", nargs="+", default=None, help="layer names (default: all indexed)")
    parser.add_argument("--units", default=None, help="units to render, e.g. 0-31,40 (default: all)")
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=list(KINDS),
        choices=KINDS,
        help="which visualizations (default: all three)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimisation steps (default: {GPU_STEPS} on GPU, {CPU_STEPS} on CPU)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="image side in px (default: the model's input size on GPU, half of it on CPU)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help=f"images per optimisation batch (default: {GPU_BATCH} GPU, {CPU_BATCH} CPU)",
    )
    parser.add_argument(
        "--diversity",
        type=int,
        default=DEFAULT_DIVERSITY,
        help="images in the last block's diversity set (0: none; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        report = run_featurevis(
            db_url_from_arg(args.db),
            model=args.model,
            layers=args.layers,
            units=parse_units(args.units),
            kinds=args.kinds,
            steps=args.steps,
            size=args.size,
            batch=args.batch,
            diversity=args.diversity,
            device=args.device,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 2
    if not distributed.env_context().is_writer:  # rank 0 reports for the whole job
        return 0
    if report.n_images == 0:
        print(f"{report.model}: feature visualizations already complete ({report.n_skipped_neurons} neurons)")
    else:
        print(
            f"{report.model}: rendered {report.n_images} feature visualizations in {report.seconds:.1f}s "
            f"({report.n_skipped_neurons} neurons were already done)"
        )
    return 0
