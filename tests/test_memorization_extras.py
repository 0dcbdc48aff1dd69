"""Teacher-conditioned memorization and memorization/membership agreement (kdbench.evaluation.memorization), and the
Evaluator that writes them to memorization.json and the records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from kdbench.core.cache import ArtifactCache
from kdbench.core.params import parse_specs
from kdbench.core.registry import get_registry
from kdbench.evaluation import metrics
from kdbench.evaluation.memorization import MemorizationReport, agreement, cohen_kappa, flagged_at_fpr, jaccard
from kdbench.results.writers import write_memorization
from kdbench.run.cells import attack_samples
from kdbench.run.context import RunContext
from kdbench.run.evaluator import Evaluator
from kdbench.run.plan import resolve
from kdbench.tasks.manifest import load_task
from kdbench.tasks.splits import make_splits
from kdbench.testing import single_thread


@pytest.mark.parametrize("seed", range(5))
def test_flagged_members_match_tpr_at_fpr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    members = rng.integers(0, 8, 40).astype(float) + 1  # many ties, within and across classes
    nonmembers = rng.integers(0, 8, 25).astype(float)
    for fpr in (0.0, 0.001, 0.04, 0.05, 0.2, 0.5, 1.0):
        flagged = flagged_at_fpr(members, nonmembers, fpr)
        assert flagged.mean() == pytest.approx(metrics.tpr_at_fpr(members, nonmembers, fpr)), fpr
        if flagged.any():  # the threshold really keeps the FPR within budget
            threshold = members[flagged].min()
            assert np.mean(nonmembers >= threshold) <= fpr + 1e-12


def test_jaccard_and_kappa() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.random(30) < 0.4, rng.random(30) < 0.3
        assert jaccard(a, b) == pytest.approx((a & b).sum() / (a | b).sum())
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    none = np.zeros(5, dtype=bool)
    assert jaccard(none, none) is None and cohen_kappa(none, none) is None
    assert jaccard(none, ~none) == 0.0 and cohen_kappa(none, ~none) == 0.0


def test_teacher_conditioned_rate_by_hand() -> None:
    rates = np.array([0.5, 0.7, 1.0, 1.0, 0.0, 0.25])  # 4 members, then 2 non-members
    teacher = np.array([0.9, 0.6, 0.2, 0.5])  # memorizes members 0 and 1 (0.5 is not above t = 0.5)
    scores = np.array([3.0, 0.0, 2.0, 1.0, 0.5, 1.5])
    found = agreement(rates[:4] > 0.5, "loss", scores[:4], scores[4:], 0.0)  # flags members above 1.5
    report = MemorizationReport(["a", "b", "c", "d", "e", "f"], rates, 4, 0.5, teacher, found)
    assert report.teacher_conditioned() == (2, pytest.approx(0.6), 0.5)
    summary = report.summary()
    assert summary["teacher_conditioned_rate"] == pytest.approx(0.6)
    assert summary["teacher_conditioned_fraction"] == 0.5
    assert summary["memorized_fraction"] == 0.75  # 0.7, 1.0, 1.0
    assert summary["gap"] == pytest.approx(summary["members"] - summary["nonmembers"])
    memorized, flagged = np.array([False, True, True, True]), np.array([True, False, True, False])
    assert (found.n_memorized, found.n_flagged, found.n_both) == (3, 2, 1)
    assert summary["agreement_jaccard"] == pytest.approx(1 / 4)
    assert summary["agreement_kappa"] == pytest.approx(cohen_kappa_score(memorized, flagged))
    data = report.to_json()
    assert data["teacher_conditioned"] == {"n_teacher_memorized": 2, "rate": pytest.approx(0.6), "fraction": 0.5}
    assert data["per_sample"][4] == {"id": "e", "member": False, "rate": 0.0}


def test_undefined_values_are_left_out_never_nan() -> None:
    rates = np.array([0.1, 0.2, 0.0, 0.3])
    report = MemorizationReport(["a", "b", "c", "d"], rates, 2, 0.5, np.array([0.1, 0.4]),
                                agreement(rates[:2] > 0.5, "loss", np.zeros(2), np.ones(2), 0.05))
    summary = report.summary()
    assert not {"teacher_conditioned_rate", "agreement_jaccard", "agreement_kappa"} & set(summary)
    assert all(np.isfinite(v) for v in summary.values())
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["teacher_conditioned"] == {"n_teacher_memorized": 0, "rate": None, "fraction": None}
    assert data["agreement"]["jaccard"] is None


@pytest.mark.slow
def test_evaluator_writes_memorization_and_caches_everything(tiny_task: Path, tmp_path: Path) -> None:
    task = load_task(str(tiny_task))
    cache = ArtifactCache(tmp_path / "cache")
    ctx = RunContext(task=task, splits=make_splits(task), cache=cache, device=torch.device("cpu"), seed=0,
                     teacher_ref=task.models.teacher, student_ref=task.models.student)
    members, nonmembers = attack_samples(task, ctx.splits)
    attacks = resolve(get_registry(), "attacks", parse_specs("loss,zlib,mink++,lowercase"))
    with single_thread():
        evaluate = Evaluator(ctx, members, nonmembers, attacks, memorization_threshold=0.1)
        teacher = evaluate("teacher", ctx.teacher())
        baseline = evaluate("baseline", ctx.baseline())
        built = list(cache.builds)
        again = Evaluator(ctx, members, nonmembers, attacks, memorization_threshold=0.1)("baseline", ctx.baseline())
    assert cache.builds == built  # a second evaluation computes nothing new
    assert again.memorization == baseline.memorization
    assert "teacher_conditioned_rate" not in teacher.memorization
    assert {"members", "nonmembers", "gap", "memorized_fraction"} <= set(baseline.memorization)
    path = write_memorization(tmp_path, [teacher, baseline])
    assert path is not None
    data = json.loads(path.read_text())
    assert data["threshold"] == 0.1 and data["agreement_fpr"] == 0.05
    assert [t["target"] for t in data["targets"]] == ["teacher", "baseline"]
    entry = data["targets"][1]
    assert entry["teacher_conditioned"]["n_teacher_memorized"] == int(
        (evaluate.memorization_rates(ctx.teacher())[: len(members)] > 0.1).sum())
    assert entry["agreement"]["attack"] in {"loss", "zlib", "mink++", "lowercase"}
    assert len(entry["per_sample"]) == len(members) + len(nonmembers)
