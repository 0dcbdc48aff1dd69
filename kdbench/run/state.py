"""What a run has produced so far, written atomically after every cell."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.cache import ArtifactCache, atomic_write_text, spec_key
from kdbench.core.params import params_dict
from kdbench.core.provenance import environment
from kdbench.core.registry import Resolved
from kdbench.core.version import __version__
from kdbench.evaluation import metrics
from kdbench.evaluation.attacks import TargetEvaluation
from kdbench.results.records import ResultRecord
from kdbench.results.writers import write_memorization, write_scores
from kdbench.run.cells import CellOutcome
from kdbench.run.config import RunConfig
from kdbench.run.context import RunContext
from kdbench.run.grid import Cell
from kdbench.tasks.splits import split_manifest_path


@dataclass
class RunState:
    """What the run has produced so far; written atomically after every cell."""

    out: Path
    config: RunConfig
    attacks: list[Resolved]
    started: str
    evaluations: list[TargetEvaluation] = field(default_factory=list)
    records: list[ResultRecord] = field(default_factory=list)
    failures: list[CellOutcome] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, evaluation: TargetEvaluation, ctx: RunContext, defense_report: dict[str, Any] | None = None) -> None:
        self.evaluations.append(evaluation)
        provenance = {
            "split_hashes": ctx.splits.hashes(),
            "teacher_model": ctx.teacher_ref,
            "student_model": ctx.student_ref,
            "packages": environment()["packages"],
            "model_key": evaluation.trained.key,  # links the record to analyses of that model (per_block.json)
        }
        key = f"{ctx.task.name}:{ctx.seed}:{ctx.teacher_ref}:{ctx.student_ref}"
        self.contexts[key] = {
            "task": {"name": ctx.task.name, "version": ctx.task.version, "manifest": str(ctx.task.path)},
            "seed": ctx.seed,
            "split_hashes": ctx.splits.hashes(),
            "split_sizes": {role: len(ex) for role, ex in ctx.splits.roles.items()},
            "split_manifest": str(split_manifest_path(ctx.task)) if split_manifest_path(ctx.task).exists() else None,
            "models": {"teacher": ctx.teacher_ref, "student": ctx.student_ref},
            "device": str(ctx.device),
        }
        self.records += [
            _record(evaluation, label, m, ctx, self.run_id, provenance, self.attacks, defense_report or {})
            for label, m in evaluation.attacks.items()
        ]
        write_scores(self.out, evaluation)

    def fail_group(self, cells: Sequence[Cell], failure: tuple[str, str]) -> None:
        error, detail = failure
        self.failures += [CellOutcome(cell, error=error, detail=detail) for cell in cells]

    def merge_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)

    @property
    def run_id(self) -> str:
        return f"{self.started.replace(':', '').replace('-', '')[:15]}-{spec_key(self.config.as_dict())[:8]}"

    def write(self, cache: ArtifactCache, wall: float) -> None:
        env = environment()
        atomic_write_text(self.out / "results.jsonl", "".join(json.dumps(r.to_json()) + "\n" for r in self.records))
        write_memorization(self.out, self.evaluations)
        info = {
            "run_id": self.run_id,
            "kdbench_version": __version__,
            **env,
            "command": self.config.as_dict(),
            "config_hash": spec_key(self.config.as_dict()),
            "seeds": list(self.config.seeds),
            "groups": list(self.contexts.values()),
            "artifacts": {f"{e.target} {e.trained.label}": e.trained.key for e in self.evaluations},
            "failures": [
                {"cell": f.cell.label, "error": f.error, "traceback": f.detail} for f in self.failures
            ],
            "wall_time_per_stage": self.timings,
            "wall_time": round(wall, 3),
            "cache": {"root": str(cache.root), "hits": cache.hits, "builds": cache.builds},
            "started": self.started,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.out / "run.json", json.dumps(info, indent=2) + "\n")


def _record(
    e: TargetEvaluation,
    attack_label: str,
    m: metrics.MembershipMetrics,
    ctx: RunContext,
    run_id: str,
    provenance: dict[str, Any],
    attacks: list[Resolved],
    defense_report: dict[str, Any],
) -> ResultRecord:
    """One attack's result on one target model, with what it takes to reproduce and compare it."""
    attack = next(a for a in attacks if a.label == attack_label)
    return ResultRecord(
        run_id=run_id, task=ctx.task.name, protocol=ctx.task.distill_on, target=e.target, attack=attack.info.name,
        rouge_l=e.rouge_l, rouge_l_ci=list(e.rouge_l_ci), memorization=e.memorization, teacher_rkl=e.teacher_rkl,
        seed=ctx.seed, model=e.trained.ref, kdbench_version=__version__, git_commit=environment()["git_commit"],
        attack_params=params_dict(attack.instance.params), provenance=provenance,
        **_membership_fields(m), **_cell_fields(e, defense_report),
    )


def _membership_fields(m: metrics.MembershipMetrics) -> dict[str, Any]:
    """The record's fields that are the attack's membership metrics (tuples as lists, as JSON reads back)."""
    return {
        "auc": m.auc,
        "auc_ci": list(m.auc_ci),
        "tpr_at_1pct_fpr": m.tpr_at_1pct_fpr,
        "tpr_at_01pct_fpr": m.tpr_at_01pct_fpr,
        "tpr_at_5pct_fpr": m.tpr_at_5pct_fpr,
        "fpr_resolution": m.fpr_resolution,
        "balanced_accuracy": m.balanced_accuracy,
        "n_members": m.n_members,
        "n_nonmembers": m.n_nonmembers,
        "roc": m.roc,
    }


def _cell_fields(e: TargetEvaluation, defense_report: dict[str, Any]) -> dict[str, Any]:
    """Distiller and defenses with their parameters and report: a student's alone, since teacher and no-KD
    baseline depend on neither (their records carry None and empty dicts)."""
    if e.target != "student":
        return {"distiller": None, "defense": None, "distiller_params": {}, "defense_params": {}, "defense_report": {}}
    return {
        "distiller": e.distiller.info.name if e.distiller else None,
        "defense": "+".join(d.info.name for d in e.defenses),
        "distiller_params": params_dict(e.distiller.instance.params) if e.distiller else {},
        "defense_params": {d.info.name: params_dict(d.instance.params) for d in e.defenses},
        "defense_report": defense_report,
    }
