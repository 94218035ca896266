"""The search data key of one model: changes only when what ``/search`` prepares changes.

The search's per-model preparation (:mod:`app.live.search_prep`: unit directions, activation
sample, concept profiles, their vocabulary, unit stds) is written only by precompute stages, each
of which records a finished ``runs`` row. Unlike the data version (:mod:`app.db.version`), this
key ignores on-demand feature visualizations and hand-set labels, so rendering a neuron's image
does not throw a finished preparation away.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.schema import Run


def search_data_key(session: Session, model_id: int) -> str:
    """16 hex digits over the model's finished precompute runs (count, last id, last finish)."""
    row = session.execute(
        select(func.count(Run.id), func.max(Run.id), func.max(Run.finished_at)).where(
            Run.model_id == model_id, Run.status == "done"
        )
    ).one()
    text = f"{model_id}|{row[0]}|{row[1]}|{row[2]}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
