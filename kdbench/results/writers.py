"""Per-sample files a run writes beside results.jsonl: attack scores and memorization."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.core.cache import atomic_write_text
from kdbench.evaluation.attacks import TargetEvaluation


def score_lines(meta: dict[str, Any], sample_ids: Sequence[str], n_members: int,
                scores: dict[str, np.ndarray]) -> str:
    """Per-sample scores as JSONL: a ``_meta`` line, then {id, member, <attack>: score, ...} per sample."""
    lines = [json.dumps({"_meta": meta})]
    for i, sample_id in enumerate(sample_ids):
        row: dict[str, Any] = {"id": sample_id, "member": i < n_members}
        row.update({label: float(values[i]) for label, values in scores.items()})
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def write_scores(out: Path, evaluation: TargetEvaluation) -> None:
    """Per-sample scores of every attack, with membership labels, so anyone can recompute the metrics."""
    directory = out / "scores"
    directory.mkdir(exist_ok=True)
    name = f"{evaluation.target}-{evaluation.trained.key[:12]}"
    meta = {"target": evaluation.target, "label": evaluation.trained.label, "model_key": evaluation.trained.key}
    scores = {**evaluation.scores, **evaluation.reference_scores}
    text = score_lines(meta, evaluation.sample_ids, evaluation.n_members, scores)
    atomic_write_text(directory / f"{name}.jsonl", text)


def write_memorization(out: Path, evaluations: Sequence[TargetEvaluation]) -> Path | None:
    """OUT/memorization.json: every target's memorization report (documented in docs/results.md)."""
    reports = [(e, e.memorization_report) for e in evaluations if e.memorization_report is not None]
    if not reports:
        return None
    first = reports[0][1]
    data = {
        "threshold": first.threshold,
        "agreement_fpr": first.agreement.fpr if first.agreement else None,
        "targets": [
            {"target": e.target, "label": e.trained.label, "model_key": e.trained.key, **report.to_json()}
            for e, report in reports
        ],
    }
    path = out / "memorization.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
