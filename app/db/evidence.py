"""Label evidence (issue 16): which label a unit may carry as its title, and why.

A label is *backed* when its held-out evidence (table ``label_evidence``, written by ``precompute
labels``) reaches :data:`app.neurons.labels.BACKED_AUC` and
:data:`app.neurons.labels.BACKED_PRECISION` (:func:`app.neurons.labels.is_backed`). The title of
a unit is its best backed label (manual, then imported, then automatic); a label without
evidence, or with weak evidence, never wins by default: it is listed as weak, and the unit then
has no title.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.schema import LabelEvidence
from app.neurons.labels import is_backed


@dataclass(frozen=True)
class EvidenceRow:
    """The evidence of one label text on one neuron (see :class:`app.db.schema.LabelEvidence`)."""

    auc: float | None
    p_value: float | None
    precision: float | None
    n_images: int
    n_positive: int
    tag_source: str | None
    histogram: dict[str, Any]
    compared_with: str | None = None

    @property
    def backed(self) -> bool:
        return is_backed(self.auc, self.precision, self.n_positive)

    def as_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "p_value": self.p_value,
            "precision_top20": self.precision,
            "n_images": self.n_images,
            "n_positive": self.n_positive,
            "tag_source": self.tag_source,
            "compared_with": self.compared_with,
            "backed": self.backed,
            "weak": not self.backed,
        }


def evidence_for(session: Session, neuron_ids: Iterable[int]) -> dict[tuple[int, str], EvidenceRow]:
    """``(neuron_id, label text lower-cased) -> EvidenceRow`` for the given neurons."""
    ids = sorted({int(i) for i in neuron_ids})
    out: dict[tuple[int, str], EvidenceRow] = {}
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        for row in session.scalars(select(LabelEvidence).where(LabelEvidence.neuron_id.in_(chunk))):
            out[(row.neuron_id, row.label.lower())] = EvidenceRow(
                row.auc, row.p_value, row.precision, row.n_images, row.n_positive, row.tag_source,
                dict(row.histogram or {}), compared_with(row.label, row.tag_source),
            )  # fmt: skip
    return out


def compared_with(label: str, tag_source: str | None) -> str | None:
    """The images a label's evidence compares its concept's images with (see
    :func:`app.neurons.labels.comparison_pools`); ``None`` for evidence without concept tags."""
    from app.neurons.multimodality import is_text_tag

    if tag_source is None:
        return None
    if tag_source.startswith("probe:"):  # ``precompute labels --probe``: chosen and backed on a probe set
        what = "written words" if is_text_tag(label) else "pictures"
        return (f"held-out half of the probe set ({tag_source.removeprefix('probe:')}): {what} of other "
                "concepts (same kind where known); the label was chosen on the other half")  # fmt: skip
    if is_text_tag(label):
        return "images of other written words (same kind where known), with no pictured object"
    if tag_source == "ground-truth":
        return "plain pictures of other concepts (same kind where known), with no written word"
    return "other images with a confident zero-shot pseudo-label, with no written word"


def title_key(
    source_rank: int,
    rank: int,
    score: float | None,
    auc: float | None,
    precision: float | None,
    n_positive: int | None = None,
) -> tuple[Any, ...]:
    """Sort key of a label as a unit's title: backed labels first, then source, rank, score."""
    return (0 if is_backed(auc, precision, n_positive) else 1, source_rank, rank, -(score or 0.0))
