"""On-demand feature visualization jobs, claimed in the database (table ``featurevis_jobs``).

Several web workers may serve one index: a render starts only in the worker whose claim
(insert, or take-over of a finished/expired row) commits, so a neuron is never rendered twice
at once. The claim also enforces the limits over all workers: at most ``max_jobs`` renders at
once, at most ``per_client`` of them started by one client. Results are stored only when no
visualization exists for the neuron: a precomputed image is never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.db import put_blob
from app.db.analyses import bounded_wait
from app.db.schema import FeatureVisJob, FeatureVisualization, utcnow

WRITE_TIMEOUT_S = 2.0
ACTIVE = "rendering"


@dataclass(frozen=True)
class JobView:
    """A job as pages show it."""

    status: str  # rendering | done | failed | cancelled
    settings: dict[str, Any]
    error: str | None
    elapsed_s: float
    worker: str


def job_of(session: Session, neuron_id: int) -> JobView | None:
    """The neuron's job, if any (an expired render reads as ``cancelled``)."""
    try:
        row = session.get(FeatureVisJob, neuron_id)
    except DBAPIError:  # an index made before the table existed, opened read-only
        session.rollback()
        return None
    if row is None:
        return None
    now = utcnow()
    status = row.status
    error = row.error
    if status == ACTIVE and row.deadline_at < now:
        status, error = "cancelled", error or "the render ran past its time limit"
    end = row.finished_at or now
    return JobView(
        status, dict(row.settings or {}), error, round((end - row.started_at).total_seconds(), 1), row.worker
    )


@dataclass(frozen=True)
class Claim:
    ok: bool  # this worker renders
    reason: str | None = None  # why not
    busy: bool = False  # refused for a limit (503/429), not because it runs elsewhere


def claim(
    engine: Engine,
    neuron_id: int,
    *,
    worker: str,
    client: str,
    settings: dict[str, Any],
    max_jobs: int,
    per_client: int,
    timeout_s: float,
) -> Claim:
    """Try to claim the render of ``neuron_id`` for ``worker`` (see the module docstring)."""
    now = utcnow()
    try:
        with engine.begin() as conn:
            bounded_wait(conn, WRITE_TIMEOUT_S)
            has_images = conn.execute(
                select(FeatureVisualization.id).where(FeatureVisualization.neuron_id == neuron_id).limit(1)
            ).first()
            if has_images is not None:
                return Claim(False, "a feature visualization is stored already")
            row = conn.execute(
                select(FeatureVisJob.status, FeatureVisJob.deadline_at).where(
                    FeatureVisJob.neuron_id == neuron_id
                )
            ).first()
            if row is not None and row.status == ACTIVE and row.deadline_at >= now:
                return Claim(False, "it is rendering already")
            live = (FeatureVisJob.status == ACTIVE) & (FeatureVisJob.deadline_at >= now)
            active = int(
                conn.execute(select(func.count()).select_from(FeatureVisJob).where(live)).scalar() or 0
            )
            if active >= max_jobs:
                return Claim(
                    False, f"{active} feature visualizations are rendering already; try again later", True
                )
            mine = int(
                conn.execute(
                    select(func.count())
                    .select_from(FeatureVisJob)
                    .where(live, FeatureVisJob.client == client)
                ).scalar()
                or 0
            )
            if mine >= per_client:
                return Claim(False, f"you have {mine} render(s) running already; wait for it to finish", True)
            values = {
                "status": ACTIVE,
                "worker": worker,
                "client": client,
                "settings": settings,
                "error": None,
                "started_at": now,
                "deadline_at": now + timedelta(seconds=timeout_s),
                "finished_at": None,
            }
            if row is None:
                conn.execute(insert(FeatureVisJob).values(neuron_id=neuron_id, **values))
            else:
                conn.execute(
                    update(FeatureVisJob).where(FeatureVisJob.neuron_id == neuron_id).values(**values)
                )
        return Claim(True)
    except IntegrityError:  # another worker inserted the row first
        return Claim(False, "it is rendering already")
    except Exception as exc:  # busy or read-only database
        return Claim(False, f"the database is busy or read-only ({type(exc).__name__})", True)


def finish(engine: Engine, neuron_id: int, worker: str, status: str, error: str | None = None) -> None:
    """Mark this worker's job finished (``done``, ``failed`` or ``cancelled``)."""
    with engine.begin() as conn:
        bounded_wait(conn, WRITE_TIMEOUT_S)
        conn.execute(
            update(FeatureVisJob)
            .where(FeatureVisJob.neuron_id == neuron_id, FeatureVisJob.worker == worker)
            .values(status=status, error=(error or None) and error[:500], finished_at=utcnow())
        )


def store_images(
    session: Session, neuron_id: int, images: list[tuple[str, bytes, int, float, dict[str, Any]]]
) -> bool:
    """Insert ``(kind, png, size, objective, settings)`` rows (index 0) unless the neuron has any
    visualization already (never overwrite one). Commits; True when stored."""
    exists = session.scalar(
        select(FeatureVisualization.id).where(FeatureVisualization.neuron_id == neuron_id).limit(1)
    )
    if exists is not None:
        return False
    for kind, png, size, objective, settings in images:
        digest = put_blob(session, png, "image/png", size, size)
        session.add(
            FeatureVisualization(
                neuron_id=neuron_id,
                kind=kind,
                index=0,
                blob_sha256=digest,
                objective=objective,
                settings=settings,
            )
        )
    session.commit()
    return True
