"""Bookkeeping shared by the resumable precompute stages: one ``runs`` row per (model, stage, params)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.schema import Run


def find_or_start_run(
    session: Session,
    model_id: int,
    stage: str,
    params: dict[str, Any],
    digest: str,
    progress: dict[str, Any],
) -> Run:
    """The run of ``stage`` with these parameters, created (status ``running``) if there is none."""
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
