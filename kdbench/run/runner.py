"""``kdbench run``: a grid of cells (DESIGN.md §1, §7).

Plugins and parameters are resolved before any work starts. For each group of cells sharing a teacher and a
baseline (task, seed, models), those two are built and attacked once; then every cell (distiller × defense stack)
distils and attacks a student through an executor (in-process, or Ray). A failing cell is recorded with its error
and the grid goes on. ``results.jsonl`` is rewritten atomically after every cell, so an interrupted grid leaves
valid partial results, and every finished artifact is cached, so the same command again resumes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.cache import ArtifactCache, spec_key
from kdbench.core.errors import KdbenchError, OutputError
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.registry import Registry, Resolved
from kdbench.evaluation.attacks import TargetEvaluation
from kdbench.models.families import get_family
from kdbench.models.hub import PATH_FORMS, check_hub_name
from kdbench.results.records import ResultRecord
from kdbench.run.cells import CellOutcome, GroupBase, failure_of, make_context, set_threads
from kdbench.run.config import RunConfig
from kdbench.run.context import RunContext
from kdbench.run.executors.local import Executor, local_executor
from kdbench.run.executors.ray import ray_executor
from kdbench.run.grid import Cell, Grid, check_seeds
from kdbench.run.plan import check_defenses, defense_stacks, expand, length_caps, resolve
from kdbench.run.state import RunState
from kdbench.tasks.manifest import Task, TaskError, load_task
from kdbench.tasks.sources import check_generator


@dataclass
class RunResult:
    out: Path
    evaluations: list[TargetEvaluation]
    records: list[ResultRecord]
    attack_labels: list[str]
    failures: list[CellOutcome]
    cache_hits: list[str]
    cache_builds: list[str]
    wall_time: float
    attack_failures: list[dict[str, str]] = field(default_factory=list)  # (target, attack) pairs that failed


# What a run writes into --out: refused onto another run's directory, removed (with scores/) under --force.
OUTPUT_FILES = ("results.jsonl", "run.json", "memorization.json", "deltas.json", "per_block.json")


def prepare_out(out: Path | None, config_hash: str = "", force: bool = False) -> Path:
    """Create the output directory (a new timestamped one under runs/ by default) and prove it is writable.

    An existing non-empty directory is taken only when it holds a run of the same configuration (``config_hash``
    in its run.json: the run resumes into it) or with ``force`` (the previous run's files are removed first, so
    no stale scores stay beside the new ones). Temporaries an interrupted write left behind are removed.
    """
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / stamp
        suffix = 1
        while out.exists():
            out = Path("runs") / f"{stamp}-{suffix}"
            suffix += 1
    if out.is_dir() and _holds_files(out) and _previous_config_hash(out) != config_hash:
        if not force:
            raise OutputError(
                f"The output directory {out} is not empty and holds no run of this configuration "
                f"({'run.json has another config_hash' if (out / 'run.json').exists() else 'no run.json'}); "
                "its results would be overwritten and mixed with the new ones. Choose another --out, or pass "
                "--force to replace the kdbench outputs in it."
            )
        _remove_outputs(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kdbench-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"Cannot write to the output directory {out} ({exc.strerror or exc}). Choose another with --out DIR."
        ) from exc
    remove_temporaries(out)
    return out


def _holds_files(out: Path) -> bool:
    return any(not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir())


def _previous_config_hash(out: Path) -> str | None:
    try:
        value = json.loads((out / "run.json").read_text(encoding="utf-8")).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _remove_outputs(out: Path) -> None:
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    if (out / "scores").is_dir():
        for path in (out / "scores").glob("*.jsonl"):
            path.unlink()


def remove_temporaries(out: Path) -> None:
    """The hidden ``.NAME.*.tmp`` files of atomic writes that a kill interrupted (``atomic_write_text``)."""
    for directory in (out, out / "scores"):
        for path in directory.glob(".*.tmp") if directory.is_dir() else ():
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunPlan:
    """What the grid loop needs, known once the whole command has been checked: past this point nothing fails
    for a typo, an unknown plugin or a defense that cannot apply, so no training is wasted on one."""

    grid: Grid
    attacks: list[Resolved]
    out: Path
    executor: Executor


class Runner:
    """Runs one invocation of ``kdbench run`` over its grid."""

    def __init__(
        self,
        config: RunConfig,
        registry: Registry,
        cache: ArtifactCache | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.cache = cache or ArtifactCache()
        self.reporter = reporter or NullReporter()

    def run(self) -> RunResult:
        start = time.perf_counter()
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        set_threads(self.config)
        plan = self.plan()
        state = RunState(out=plan.out, config=self.config, attacks=plan.attacks, started=started)
        state.write(self.cache, 0.0)  # run.json from the start: this directory is this configuration's
        try:
            groups = self._contexts(plan.grid, state, start)
            self._collect(groups, plan.executor(groups, plan.attacks, self.registry), state, start)
        except KeyboardInterrupt:
            state.write(self.cache, time.perf_counter() - start, status="interrupted")
            raise
        wall = time.perf_counter() - start
        state.write(self.cache, wall, status="failed" if state.failed else "complete")
        remove_temporaries(plan.out)
        return RunResult(
            plan.out, state.evaluations, state.records, [a.label for a in plan.attacks], state.failures,
            self.cache.hits, self.cache.builds, wall, state.attack_failures,
        )

    def plan(self) -> RunPlan:
        """Resolve plugins, tasks and defenses and create the output directory; raise on the first mistake."""
        config = self.config
        distillers = expand(self.registry, "distillers", config.distillers)
        resolve(self.registry, "distillers", distillers)
        stacks = defense_stacks(self.registry, config.defenses)
        attacks = resolve(self.registry, "attacks", config.attacks)
        if config.family:
            get_family(config.family)
        check_seeds(list(config.seeds), "seeds")
        tasks = [_distillable(load_task(name)) for name in config.tasks]
        for task in tasks:
            check_generator(task)
        for line in length_caps(tasks, config.models, config.trust_remote_code):
            self.reporter.log(line, level="warning")
        students = {m[1] or task.models.student for task in tasks for m in config.models}
        for ref in students | {m[0] or task.models.teacher for task in tasks for m in config.models}:
            if not ref.startswith(PATH_FORMS):  # a missing directory fails its group (tests/test_grid.py)
                check_hub_name(ref)  # a name neither local nor cached, offline: refused now, not after retries
        check_defenses(self.registry, stacks, distillers, students, config.trust_remote_code)
        grid = Grid(
            tuple(config.tasks), tuple(config.seeds), tuple(config.models), tuple(distillers), tuple(stacks),
            tuple(config.attacks),
        )
        out = prepare_out(config.out, spec_key(config.as_dict()), config.force)
        return RunPlan(grid, attacks, out, make_executor(config, self.cache))

    def _contexts(self, grid: Grid, state: RunState, start: float) -> list[tuple[list[Cell], RunContext]]:
        """The grid's groups, each with its context (task data and splits, no training); a group whose data
        cannot be read is recorded as failed here and left out."""
        splits_memo: dict[Any, Any] = {}
        groups: list[tuple[list[Cell], RunContext]] = []
        for _group, group_cells in itertools.groupby(grid.cells(), key=lambda c: c.group):
            cells = list(group_cells)
            try:
                groups.append((cells, make_context(self.config, cells[0], self.cache, self.reporter, splits_memo)))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                state.fail_group(cells, failure_of(exc, "teacher/baseline failed: "))
                state.write(self.cache, time.perf_counter() - start)
        return groups

    def _collect(
        self,
        groups: list[tuple[list[Cell], RunContext]],
        events: Iterator[GroupBase | CellOutcome],
        state: RunState,
        start: float,
    ) -> None:
        """Record the executor's events as they come: each group's teacher and baseline, then its cells; the
        results are rewritten after every cell."""
        for cells, ctx in groups:
            base = next(events)
            assert isinstance(base, GroupBase)
            if base.error is None:
                for evaluation in base.evaluations:
                    state.add(evaluation, ctx)
            for _cell in cells:
                outcome = next(events)
                assert isinstance(outcome, CellOutcome)
                self._record_cell(outcome, ctx, state)
                state.write(self.cache, time.perf_counter() - start)
            state.merge_timings(ctx.timings)

    def _record_cell(self, outcome: CellOutcome, ctx: RunContext, state: RunState) -> None:
        if outcome.evaluation is not None:
            state.add(outcome.evaluation, ctx, outcome.defense_report)
            state.note_teacher_outputs(outcome.cell.label, outcome.distill_notes)
        else:
            state.failures.append(outcome)
            self.reporter.log(f"cell failed: {outcome.cell.label}: {outcome.error}", level="error")
        state.timings[outcome.cell.label] = round(outcome.seconds, 3)


def make_executor(config: RunConfig, cache: ArtifactCache) -> Executor:
    """The executor ``config.executor`` names: ``local`` (this process) or ``ray`` (a Ray cluster)."""
    if config.executor == "local":
        return local_executor(config)
    if config.executor == "ray":
        return ray_executor(config, cache)
    raise KdbenchError(f"Unknown executor {config.executor!r}; use local or ray.")


def _distillable(task: Task) -> Task:
    """``task``, unless it is an evaluation set only (nothing to distil from or attack)."""
    if task.eval_only:
        raise TaskError(
            f"{task.path}: task {task.name!r} is a utility evaluation set (eval role only); it has no "
            "private/public/holdout roles to distil from and attack. Pick a task with all four roles."
        )
    return task
