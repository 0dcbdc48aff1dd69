"""One group's teacher and baseline, and one cell's student: built, attacked, never raising."""

from __future__ import annotations

import json
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.cache import ArtifactCache
from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.registry import Registry, Resolved, get_registry
from kdbench.core.types import TrainedModel
from kdbench.defense.base import REPORT_FILE
from kdbench.defense.stack import DefenseStack
from kdbench.evaluation.attacks import TargetEvaluation, run_attacks
from kdbench.models import hub as models
from kdbench.models.families import get_family
from kdbench.run.config import RunConfig
from kdbench.run.context import RunContext
from kdbench.run.evaluator import Evaluator
from kdbench.run.grid import Cell
from kdbench.run.plan import distiller_with_defaults, resolve
from kdbench.run.student import build_student, distill_notes
from kdbench.scoring.context import ScoringContext
from kdbench.tasks.manifest import Task, load_task
from kdbench.tasks.splits import Splits, make_splits, verify_splits


@dataclass
class CellOutcome:
    """A cell's evaluation, or the error that stopped it."""

    cell: Cell
    evaluation: TargetEvaluation | None = None
    error: str | None = None
    detail: str | None = None  # the traceback, for run.json
    seconds: float = 0.0
    defense_report: dict[str, Any] = field(default_factory=dict)  # what the defenses measured (spent ε, votes)
    distill_notes: list[dict[str, Any]] = field(default_factory=list)  # per student: the distillation's choices


@dataclass
class GroupBase:
    """What a group's cells share: its trained teacher, and the teacher's and baseline's evaluations; or the
    error that stopped them (then every cell of the group fails with it)."""

    teacher: TrainedModel | None = None
    evaluations: list[TargetEvaluation] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None


def attack_samples(task: Task, splits: Splits) -> tuple[list[Example], list[Example]]:
    """Members from private and non-members from holdout (as many, or ``evaluation.n_nonmembers``), drawn with the
    task seed (same for every run)."""
    rng = random.Random(f"{task.name}:{task.seed}:attack-samples")
    private, holdout = splits.roles["private"], splits.roles["holdout"]
    n = min(task.evaluation.n_attack, len(private), len(holdout))
    wanted = task.evaluation.n_nonmembers
    if wanted is not None and wanted > len(holdout):
        raise KdbenchError(f"Task {task.name!r} ({task.path}): evaluation.n_nonmembers is {wanted}, but the holdout "
                           f"split has {len(holdout)} examples; lower it or enlarge the holdout split.")
    return rng.sample(private, n), rng.sample(holdout, n if wanted is None else wanted)


def make_context(
    config: RunConfig, cell: Cell, cache: ArtifactCache, reporter: Reporter, splits_memo: dict[Any, Any] | None = None
) -> RunContext:
    """The shared context of a cell's group: task, verified splits, models, device, training presets."""
    memo = splits_memo if splits_memo is not None else {}
    if cell.task not in memo:
        task = load_task(cell.task)
        splits = make_splits(task, data_dir=config.data_dir)
        if not verify_splits(task, splits):
            reporter.log(
                f"task {task.name!r} has no split manifest (tasks/splits/{task.name}.json); its "
                "splits cannot be proven identical to anyone else's. `kdbench tasks freeze` writes one.",
                level="warning",
            )
        memo[cell.task] = (task, splits)
    task, splits = memo[cell.task]
    teacher_ref, student_ref = cell.teacher or task.models.teacher, cell.student or task.models.student
    return RunContext(
        task=task,
        splits=splits,
        cache=cache,
        device=models.resolve_device(config.device),
        seed=cell.seed,
        teacher_ref=teacher_ref,
        student_ref=student_ref,
        trust_remote_code=config.trust_remote_code,
        reporter=reporter,
        micro_batch=config.micro_batch,
        training_overrides=dict(get_family(config.family).training) if config.family else {},
        lora={"teacher": get_family(config.family).lora} if config.family and get_family(config.family).teacher_lora
        else {},
    )


def failure_of(exc: BaseException, prefix: str = "") -> tuple[str, str]:
    """(message for the summary, traceback for run.json) of an exception that stopped a group or a cell."""
    message = str(exc) if isinstance(exc, KdbenchError) else f"{type(exc).__name__}: {exc}"
    return prefix + message, traceback.format_exc()


def own_context(config: RunConfig, cell: Cell, cache_root: Path | None) -> RunContext:
    """The context of a group or cell run on its own (a Ray task): its threads, cache and a silent reporter."""
    set_threads(config)
    cache = ArtifactCache(cache_root) if cache_root else ArtifactCache()
    return make_context(config, cell, cache, NullReporter())


def run_group_base(
    config: RunConfig,
    cell: Cell,
    attacks: list[Resolved] | None = None,
    ctx: RunContext | None = None,
    cache_root: Path | None = None,
) -> GroupBase:
    """Train (or load) the teacher and the no-KD baseline of ``cell``'s group and attack both; never raises for
    their own failures (they are the outcome)."""
    try:
        if ctx is None:
            ctx = own_context(config, cell, cache_root)
        attacks = attacks if attacks is not None else resolve(get_registry(), "attacks", config.attacks)
        members, nonmembers = attack_samples(ctx.task, ctx.splits)
        evaluate = Evaluator(ctx, members, nonmembers, attacks)
        teacher = ctx.teacher()
        evaluations = [evaluate("teacher", teacher), evaluate("baseline", ctx.baseline())]
        return GroupBase(teacher, evaluations)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        error, detail = failure_of(exc, "teacher/baseline failed: ")
        return GroupBase(error=error, detail=detail)


def run_cell_after(
    config: RunConfig,
    cell: Cell,
    base: GroupBase,
    registry: Registry | None = None,
    ctx: RunContext | None = None,
    cache_root: Path | None = None,
) -> CellOutcome:
    """:func:`run_cell` once its group's base is there; the cell fails with the base's error if it failed."""
    if base.teacher is None:
        return CellOutcome(cell, error=base.error, detail=base.detail)
    return run_cell(config, cell, base.teacher, registry=registry, ctx=ctx, cache_root=cache_root)


def set_threads(config: RunConfig) -> None:
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)


def run_cell(
    config: RunConfig,
    cell: Cell,
    teacher: TrainedModel,
    registry: Registry | None = None,
    ctx: RunContext | None = None,
    cache_root: Path | None = None,
) -> CellOutcome:
    """Distil and attack one student; never raises for the cell's own failures (they are the outcome)."""
    start = time.perf_counter()
    try:
        registry = registry or get_registry()
        if ctx is None:
            ctx = own_context(config, cell, cache_root)
        family = get_family(config.family).distillers if config.family else {}
        spec = distiller_with_defaults(registry, cell.distiller, ctx.task.distillers, family)
        distiller = resolve(registry, "distillers", [spec])[0]
        distiller.label = str(cell.distiller)  # as the user named it; its params (records) carry the presets
        stack = resolve(registry, "defenses", list(cell.defenses))
        attacks = resolve(registry, "attacks", config.attacks)
        defenses = DefenseStack([d.instance for d in stack])
        members, nonmembers = attack_samples(ctx.task, ctx.splits)
        student = build_student(
            ctx, teacher, distiller.instance, distiller.label, defenses, cell.defense_label, (members, nonmembers)
        )
        evaluator = Evaluator(ctx, members, nonmembers, attacks)
        evaluation = evaluator("student", student)
        evaluation.distiller, evaluation.defenses = distiller, stack
        report = defense_report(defenses, student, evaluator)
        return CellOutcome(
            cell, evaluation, seconds=time.perf_counter() - start, defense_report=report,
            distill_notes=distill_notes(student),
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        error, detail = failure_of(exc)
        return CellOutcome(cell, error=error, detail=detail, seconds=time.perf_counter() - start)


def defense_report(defenses: DefenseStack, student: TrainedModel, evaluator: Evaluator) -> dict[str, Any]:
    """What the defenses measured: while building the student (saved beside it, e.g. spent ε), and on the
    evaluated student (``assess``, e.g. an ensemble's majority vote over its members' attack predictions)."""
    saved = student.path / REPORT_FILE
    report: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    ctx, n = evaluator.ctx, len(evaluator.members)

    def score(trained: TrainedModel) -> dict[str, Any]:
        scoring = ScoringContext(evaluator.host, trained, evaluator.samples)
        return run_attacks(evaluator.attacks, scoring, n, seed=ctx.seed, n_resamples=ctx.task.evaluation.bootstrap,
                           errors={})[1]  # an attack's failure is already recorded with the student's

    for name, extra in defenses.assess(student, score, n).items():
        report[name] = {**report.get(name, {}), **extra}
    return report
