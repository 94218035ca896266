"""The stage protocol shared by every resumable precompute stage.

A stage (activations, featurevis, words, labels) is one ``runs`` row per (model, stage, params):

1. ``params`` — a JSON-able dict of every input that determines the result (not performance
   knobs such as batch size or device); :func:`params_hash` is its digest.
2. :func:`start_run` — find the row for those params or create it (status ``running``). A row
   whose status is ``done`` means the stage has nothing to do.
3. :func:`checkpoint_run` — store the stage's resumable state (bytes) and progress (JSON).
4. :func:`finish_run` — status ``done``, state dropped, ``finished_at`` set.

Each stage module has one entry point named ``run_<stage>(db_url, ...)`` (``run_activations``,
``run_featurevis``, ``run_words``, ``run_labels``) and ``add_arguments``/``run`` for the CLI.

Under ``torchrun`` every rank keeps its own checkpoint in a *part* row (:func:`part_stage`, one
per rank and world size), so a killed rank that is restarted resumes its own share; rank 0
merges the parts, writes the result, finishes the stage's row and deletes the part rows
(:func:`drop_parts`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.schema import Run, utcnow

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
    return find_or_start_run(session, model_id, stage, params, params_hash(params), progress or {})


def find_or_start_run(
    session: Session,
    model_id: int,
    stage: str,
    params: dict[str, Any],
    digest: str,
    progress: dict[str, Any],
) -> Run:
    """:func:`start_run` with the digest given (kept for callers that computed it already)."""
    run = session.scalar(
        select(Run).where(Run.model_id == model_id, Run.stage == stage, Run.params_hash == digest)
    )
    if run is None:
        run = Run(
            model_id=model_id,
            stage=stage,
            params=params,
            params_hash=digest,
            status="running",
            progress=progress,
        )
        session.add(run)
        session.flush()
    return run


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
