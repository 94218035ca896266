"""The stage protocol shared by every resumable precompute stage.

A stage (activations, summaries, featurevis, words, labels) is one ``runs`` row per
(model, stage, params):

1. ``params`` — a JSON-able dict of every input that determines the result (not performance
   knobs such as batch size or device); :func:`params_hash` is its digest.
2. :func:`start_run` — find the row for those params or create it (status ``running``). A row
   whose status is ``done`` means the stage has nothing to do.
3. :func:`checkpoint_run` — store the stage's resumable state (bytes) and progress (JSON).
4. :func:`finish_run` — status ``done``, state dropped, ``finished_at`` set.

Finishing a run changes the index's data version (:mod:`app.db.version`), so a served index
shows the stage's result without a restart.

Each stage module has one entry point named ``run_<stage>`` (``run_activations``,
``run_summaries``, ``run_featurevis``, ``run_words``, ``run_labels``) and ``add_arguments``/``run``
for the CLI. A stage that reads an index takes the database first, ``run_<stage>(db_url, ...)``;
``run_activations(spec, dataset, db_url, ...)`` builds the index, so it takes what it indexes
first.

Under ``torchrun`` only rank 0 writes the stage's row. A stage whose ranks each keep resumable
state (activations, words) starts with :func:`start_distributed_run`: every rank also keeps its
own checkpoint in a *part* row (:func:`part_stage`, one per rank and world size), so a killed rank
that is restarted resumes its own share; rank 0 merges the parts, writes the result, finishes the
stage's row and deletes the part rows (:func:`drop_parts`). Feature visualization resumes from its
stored images and labels from rank 0's checkpoint, so their other ranks keep no row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.schema import Run, utcnow

if TYPE_CHECKING:
    from precompute.distributed import Context

PART_SEPARATOR = "@"


def params_hash(params: dict[str, Any]) -> str:
    """SHA-256 of the params as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def start_run(
    session: Session,
    model_id: int,
    stage: str,
    params: dict[str, Any],
    progress: dict[str, Any] | None = None,
) -> Run:
    """The run of ``stage`` with these ``params``, created (status ``running``) if there is none.

    Flushes (the new row gets its id) but does not commit: the caller's transaction does.
    """
    run = _find(session, model_id, stage, params_hash(params))
    if run is None:
        run = Run(
            model_id=model_id,
            stage=stage,
            params=params,
            params_hash=params_hash(params),
            status="running",
            progress=progress or {},
        )
        session.add(run)
        session.flush()
    return run


def _find(session: Session, model_id: int, stage: str, digest: str) -> Run | None:
    return session.scalar(
        select(Run).where(Run.model_id == model_id, Run.stage == stage, Run.params_hash == digest)
    )


@dataclass(frozen=True)
class DistributedStart:
    """What :func:`start_distributed_run` found for this rank."""

    model_id: int
    run_id: int  # the stage's row (rank 0 finishes it)
    status: str  # its status: ``done`` means there is nothing to do
    part_id: int  # the row this rank checkpoints into: its part row under torchrun, else the run
    state: bytes | None  # that row's saved state (``None``: start from scratch)


def start_distributed_run(
    sessions: sessionmaker[Session],
    ctx: Context,
    model_id: Callable[[Session], int],
    stage: str,
    params: dict[str, Any],
    progress: dict[str, Any],
    *,
    part_progress: dict[str, Any] | None = None,
    prepare: Callable[[Session], object] | None = None,
) -> DistributedStart:
    """Find or start the run of ``stage`` (rank 0 only) and this rank's checkpoint row.

    Rank 0 first calls ``prepare(session)`` (e.g. to create the model row) and then
    :func:`start_run` in one transaction; after a barrier every rank reads the run, and under
    ``torchrun`` (unless the run is done) finds or starts its part row (:func:`part_stage`,
    ``part_progress``). ``model_id(session)`` looks the model's id up (on every rank). Commits.
    """
    from precompute.distributed import barrier  # imports torch: only for the stages that need it

    if ctx.is_writer:
        with sessions.begin() as session:
            if prepare is not None:
                prepare(session)
            start_run(session, model_id(session), stage, params, progress)
    barrier(ctx)  # the row exists before any rank reads it
    with sessions.begin() as session:
        model = model_id(session)
        run = _find(session, model, stage, params_hash(params))
        if run is None:
            raise LookupError(f"no {stage} run for model {model} (rank 0 should have started it)")
        part = run
        if ctx.distributed and run.status != "done":
            part = start_run(session, model, part_stage(stage, ctx.rank, ctx.world), params, part_progress)
        return DistributedStart(model, run.id, run.status, part.id, part.state)


def _row(session: Session, run: Run | int) -> Run:
    row = session.get(Run, run) if isinstance(run, int) else run
    if row is None:
        raise LookupError(f"run {run} does not exist")
    return row


def checkpoint_run(
    session: Session, run: Run | int, state: bytes | None, progress: dict[str, Any] | None = None
) -> None:
    """Store the resumable ``state`` (and ``progress``) of a running stage (no commit)."""
    row = _row(session, run)
    row.state = state
    if progress is not None:
        row.progress = progress
    session.flush()


def finish_run(session: Session, run: Run | int, progress: dict[str, Any] | None = None) -> None:
    """Mark the run done: state dropped, ``finished_at`` set, final ``progress`` (no commit)."""
    row = _row(session, run)
    row.status = "done"
    row.state = None
    row.finished_at = utcnow()
    if progress is not None:
        row.progress = progress
    session.flush()


def part_stage(stage: str, rank: int, world: int) -> str:
    """Stage name of one rank's part row, e.g. ``activations@1/2``."""
    return f"{stage}{PART_SEPARATOR}{rank}/{world}"


def drop_parts(session: Session, model_id: int, stage: str, digest: str) -> None:
    """Delete the part rows of a distributed run of ``stage`` (their params hash is ``digest``)."""
    session.execute(
        delete(Run).where(
            Run.model_id == model_id,
            Run.stage.like(f"{stage}{PART_SEPARATOR}%"),
            Run.params_hash == digest,
        )
    )
