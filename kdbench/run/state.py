"""What a run has produced so far, written atomically after every cell.

``results.jsonl`` (and ``memorization.json``) are written first and ``run.json`` last: it names the number of
records and the SHA-256 of the ``results.jsonl`` it describes, and its ``status`` says whether the run is still
``running`` (or was killed), ``complete``, finished with failures (``failed``) or ``interrupted``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
from kdbench.results.records import ResultRecord, validate_record
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
    attack_failures: list[dict[str, str]] = field(default_factory=list)  # a (target, attack) pair that failed
    timings: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_outputs: dict[str, Any] = field(default_factory=dict)  # per cell: live or cached teacher, and why

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
        where = f"{ctx.task.name} seed={ctx.seed} {evaluation.target} {evaluation.trained.label}"
        for label, error in evaluation.attack_errors.items():
            self.attack_failures.append({"target": where, "attack": label, "error": error})
        measured = [(label, m, False) for label, m in evaluation.attacks.items()]
        measured += [(label, m, True) for label, m in evaluation.references.items()]
        for label, m, reference in measured:
            record = _record(evaluation, label, m, ctx, self.run_id, provenance, self.attacks, defense_report or {},
                             reference=reference)
            problems = validate_record(record.to_json())  # e.g. a NaN: never written where the leaderboard reads
            if problems:
                self.attack_failures.append({"target": where, "attack": label,
                                             "error": "invalid result: " + "; ".join(problems)})
            else:
                self.records.append(record)
        write_scores(self.out, evaluation)

    def fail_group(self, cells: Sequence[Cell], failure: tuple[str, str]) -> None:
        error, detail = failure
        self.failures += [CellOutcome(cell, error=error, detail=detail) for cell in cells]

    def note_teacher_outputs(self, cell: str, notes: list[dict[str, Any]]) -> None:
        """Where the cell's teacher distributions came from (kdbench.distill.teacher_outputs.teacher_hook): one
        entry, or one per student when a defense trains several."""
        choices = [n["teacher_outputs"] for n in notes if "teacher_outputs" in n]
        if choices:
            self.teacher_outputs[cell] = choices[0] if len(choices) == 1 else choices

    def merge_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)

    @property
    def run_id(self) -> str:
        return f"{self.started.replace(':', '').replace('-', '')[:15]}-{spec_key(self.config.as_dict())[:8]}"

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.attack_failures)

    def write(self, cache: ArtifactCache, wall: float, status: str = "running") -> None:
        """Results first, then run.json naming them (``status``: running, complete, failed or interrupted)."""
        env = environment()
        results = "".join(json.dumps(r.to_json(), allow_nan=False) + "\n" for r in self.records)
        atomic_write_text(self.out / "results.jsonl", results)
        write_memorization(self.out, self.evaluations)
        info = {
            "status": status,
            "records": len(self.records),
            "results_sha256": hashlib.sha256(results.encode("utf-8")).hexdigest(),
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
            ] + [{"cell": f["target"], "attack": f["attack"], "error": f["error"], "traceback": None}
                 for f in self.attack_failures],
            "wall_time_per_stage": self.timings,
            "teacher_outputs": self.teacher_outputs,
            "wall_time": round(wall, 3),
            "cache": {"root": str(cache.root), "hits": cache.hits, "builds": cache.builds},
            "started": self.started,
            "finished": None if status == "running" else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
    reference: bool = False,
) -> ResultRecord:
    """One attack's result on one target model, with what it takes to reproduce and compare it."""
    attack = next(a for a in attacks if a.label == attack_label)
    return ResultRecord(
        run_id=run_id, task=ctx.task.name, protocol=ctx.task.distill_on, target=e.target, attack=attack.info.name,
        rouge_l=e.rouge_l, rouge_l_ci=list(e.rouge_l_ci), memorization=e.memorization, teacher_rkl=e.teacher_rkl,
        pii_leakage=e.pii_leakage,
        seed=ctx.seed, model=e.trained.ref, kdbench_version=__version__, git_commit=environment()["git_commit"],
        attack_params=params_dict(attack.instance.params), provenance=provenance, reference=reference,
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
        "member_tpr": m.member_tpr,
        "member_precision": m.member_precision,
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
