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
import random
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench import __version__, metrics, models
from kdbench.cache import ArtifactCache, atomic_write_text, spec_key
from kdbench.data import Example
from kdbench.defense import REPORT_FILE, DefenseStack, model_config
from kdbench.errors import KdbenchError, OutputError, PluginError
from kdbench.evaluate import Evaluator, Resolved, TargetEvaluation, run_attacks, write_memorization, write_scores
from kdbench.families import get_family
from kdbench.grid import Cell, Grid
from kdbench.params import PluginSpec, build_params, params_dict
from kdbench.plugins import Registry, get_registry
from kdbench.progress import NullReporter, Reporter
from kdbench.provenance import environment
from kdbench.results import ResultRecord
from kdbench.scoring import ScoringContext
from kdbench.stages import RunContext, TrainedModel
from kdbench.tasks import Splits, Task, TaskError, load_task, make_splits, split_manifest_path, verify_splits


@dataclass(frozen=True)
class RunConfig:
    """What ``kdbench run`` was asked to do: the grid's lists and how to run it."""

    distillers: Sequence[PluginSpec]
    attacks: Sequence[PluginSpec]
    defenses: Sequence[tuple[PluginSpec, ...]] = ((PluginSpec("none"),),)
    tasks: Sequence[str] = ("synthetic-pii",)
    seeds: Sequence[int] = (0,)
    models: Sequence[tuple[str | None, str | None]] = ((None, None),)  # (teacher, student); None = the task's
    family: str | None = None  # training presets of a model family (METHODS.md §3)
    data_dir: Path | None = None
    out: Path | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    executor: str = "local"
    ray_address: str | None = None
    threads: int | None = None
    micro_batch: int | None = None  # rows per forward pass when training (None: the whole batch)

    def grid(self) -> Grid:
        return Grid(
            tasks=tuple(self.tasks),
            seeds=tuple(self.seeds),
            models=tuple(self.models),
            distillers=tuple(self.distillers),
            defense_stacks=tuple(tuple(s) for s in self.defenses),
            attacks=tuple(self.attacks),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "distillers": [str(s) for s in self.distillers],
            "attacks": [str(s) for s in self.attacks],
            "defenses": ["+".join(str(d) for d in stack) for stack in self.defenses],
            "tasks": list(self.tasks),
            "seeds": list(self.seeds),
            "models": [list(m) for m in self.models],
            "family": self.family,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "device": self.device,
            "micro_batch": self.micro_batch,
        }


@dataclass
class CellOutcome:
    """A cell's evaluation, or the error that stopped it."""

    cell: Cell
    evaluation: TargetEvaluation | None = None
    error: str | None = None
    detail: str | None = None  # the traceback, for run.json
    seconds: float = 0.0
    defense_report: dict[str, Any] = field(default_factory=dict)  # what the defenses measured (spent ε, votes)


@dataclass
class GroupBase:
    """What a group's cells share: its trained teacher, and the teacher's and baseline's evaluations; or the
    error that stopped them (then every cell of the group fails with it)."""

    teacher: TrainedModel | None = None
    evaluations: list[TargetEvaluation] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None


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


def expand(registry: Registry, kind: str, specs: Sequence[PluginSpec]) -> list[PluginSpec]:
    """Replace ``all`` by every registered name of ``kind``."""
    expanded: list[PluginSpec] = []
    for spec in specs:
        if spec.name == "all":
            if spec.raw:
                raise PluginError(f"'all' takes no parameters (got {spec}); name plugins to set parameters.")
            expanded += [PluginSpec(n) for n in registry.names(kind)]
        else:
            expanded.append(spec)
    if not expanded:
        raise PluginError(f"No {kind} given. See `kdbench list {kind}`.")
    return expanded


def resolve(registry: Registry, kind: str, specs: Sequence[PluginSpec]) -> list[Resolved]:
    """Instantiate each plugin with validated parameters (before any work starts)."""
    out = []
    for spec in expand(registry, kind, specs):
        info = registry.get(kind, spec.name)
        params = build_params(info.cls.Params, spec.raw, owner=spec.name)
        try:
            instance = info.cls(params)
        except KdbenchError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{kind[:-1].capitalize()} {spec.name!r} (from {info.distribution}) failed to start: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        out.append(Resolved(str(spec), instance, info))
    return out


def prepare_out(out: Path | None) -> Path:
    """Create the output directory (a new timestamped one under runs/ by default) and prove it is writable."""
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / stamp
        suffix = 1
        while out.exists():
            out = Path("runs") / f"{stamp}-{suffix}"
            suffix += 1
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kdbench-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"Cannot write to the output directory {out} ({exc.strerror or exc}). Choose another with --out DIR."
        ) from exc
    return out


def attack_samples(task: Task, splits: Splits) -> tuple[list[Example], list[Example]]:
    """Members from private, as many non-members from holdout, drawn with the task seed (same for every run)."""
    rng = random.Random(f"{task.name}:{task.seed}:attack-samples")
    private, holdout = splits.roles["private"], splits.roles["holdout"]
    n = min(task.evaluation.n_attack, len(private), len(holdout))
    return rng.sample(private, n), rng.sample(holdout, n)


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
                f"[yellow]warning[/]: task {task.name!r} has no split manifest (tasks/splits/{task.name}.json); its "
                "splits cannot be proven identical to anyone else's. `kdbench tasks freeze` writes one."
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


def _failure(exc: BaseException, prefix: str = "") -> tuple[str, str]:
    """(message for the summary, traceback for run.json) of an exception that stopped a group or a cell."""
    message = str(exc) if isinstance(exc, KdbenchError) else f"{type(exc).__name__}: {exc}"
    return prefix + message, traceback.format_exc()


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
            _set_threads(config)
            cache = ArtifactCache(cache_root) if cache_root else ArtifactCache()
            ctx = make_context(config, cell, cache, NullReporter())
        attacks = attacks if attacks is not None else resolve(get_registry(), "attacks", config.attacks)
        members, nonmembers = attack_samples(ctx.task, ctx.splits)
        evaluate = Evaluator(ctx, members, nonmembers, attacks)
        teacher = ctx.teacher()
        evaluations = [evaluate("teacher", teacher), evaluate("baseline", ctx.baseline())]
        return GroupBase(teacher, evaluations)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        error, detail = _failure(exc, "teacher/baseline failed: ")
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


def _set_threads(config: RunConfig) -> None:
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
            _set_threads(config)
            cache = ArtifactCache(cache_root) if cache_root else ArtifactCache()
            ctx = make_context(config, cell, cache, NullReporter())
        distiller = resolve(registry, "distillers", [cell.distiller])[0]
        stack = resolve(registry, "defenses", list(cell.defenses))
        attacks = resolve(registry, "attacks", config.attacks)
        defenses = DefenseStack([d.instance for d in stack])
        members, nonmembers = attack_samples(ctx.task, ctx.splits)
        student = ctx.student(
            teacher, distiller.instance, distiller.label, defenses, cell.defense_label, (members, nonmembers)
        )
        evaluator = Evaluator(ctx, members, nonmembers, attacks)
        evaluation = evaluator("student", student)
        evaluation.distiller, evaluation.defenses = distiller, stack
        report = defense_report(defenses, student, evaluator)
        return CellOutcome(cell, evaluation, seconds=time.perf_counter() - start, defense_report=report)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        error, detail = _failure(exc)
        return CellOutcome(cell, error=error, detail=detail, seconds=time.perf_counter() - start)


def defense_report(defenses: DefenseStack, student: TrainedModel, evaluator: Evaluator) -> dict[str, Any]:
    """What the defenses measured: while building the student (saved beside it, e.g. spent ε), and on the
    evaluated student (``assess``, e.g. an ensemble's majority vote over its members' attack predictions)."""
    saved = student.path / REPORT_FILE
    report: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    ctx, n = evaluator.ctx, len(evaluator.members)

    def score(trained: TrainedModel) -> dict[str, Any]:
        scoring = ScoringContext(evaluator.host, trained, evaluator.samples)
        return run_attacks(evaluator.attacks, scoring, n, seed=ctx.seed, n_resamples=ctx.task.evaluation.bootstrap)[1]

    for name, extra in defenses.assess(student, score, n).items():
        report[name] = {**report.get(name, {}), **extra}
    return report


def check_defenses(
    registry: Registry,
    stacks: Sequence[tuple[PluginSpec, ...]],
    distillers: Sequence[PluginSpec],
    students: set[str],
    trust_remote_code: bool,
) -> None:
    """Refuse, before any training, defense stacks that do not compose or do not apply to a distiller or a
    student architecture (a student whose config cannot be read yet is checked again in its cell)."""
    configs: dict[str, Any] = {}
    for stack in stacks:
        defenses = DefenseStack([d.instance for d in resolve(registry, "defenses", list(stack))])
        if not defenses.checks:
            continue
        for ref in sorted(students):
            if ref not in configs:
                try:
                    configs[ref] = model_config(ref, trust_remote_code)
                except KdbenchError:
                    configs[ref] = None
            for spec in distillers:
                defenses.check(configs[ref], spec.name)


def defense_stacks(registry: Registry, stacks: Sequence[Sequence[PluginSpec]]) -> list[tuple[PluginSpec, ...]]:
    """A stack that is just ``all`` becomes one stack per registered defense (``none`` included);
    ``all`` inside a ``+`` composition is refused."""
    out: list[tuple[PluginSpec, ...]] = []
    for stack in stacks:
        if any(spec.name == "all" for spec in stack):
            if len(stack) > 1:
                raise PluginError("'all' cannot be composed with '+'; it already means one cell per defense.")
            out += [(spec,) for spec in expand(registry, "defenses", list(stack))]
        else:
            out.append(tuple(stack))
    return out


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
        config = self.config
        _set_threads(config)
        # Everything that can be wrong with the command fails here, before any training.
        distillers = expand(self.registry, "distillers", config.distillers)
        resolve(self.registry, "distillers", distillers)
        stacks = defense_stacks(self.registry, config.defenses)
        attacks = resolve(self.registry, "attacks", config.attacks)
        if config.family:
            get_family(config.family)
        for task_name in config.tasks:
            task = load_task(task_name)
            if task.eval_only:
                raise TaskError(
                    f"{task.path}: task {task.name!r} is a utility evaluation set (eval role only); it has no "
                    "private/public/holdout roles to distil from and attack. Pick a task with all four roles."
                )
        students = {m[1] or load_task(task_name).models.student for task_name in config.tasks for m in config.models}
        check_defenses(self.registry, stacks, distillers, students, config.trust_remote_code)
        grid = Grid(
            tuple(config.tasks), tuple(config.seeds), tuple(config.models), tuple(distillers), tuple(stacks),
            tuple(config.attacks),
        )
        out = prepare_out(config.out)
        executor = _executor(config, self.cache)

        state = _RunState(out=out, config=config, attacks=attacks, started=started)
        splits_memo: dict[Any, Any] = {}
        groups: list[tuple[list[Cell], RunContext]] = []
        for _group, group_cells in itertools.groupby(grid.cells(), key=lambda c: c.group):
            cells = list(group_cells)
            try:  # task data and splits, no training: a group whose data cannot be read fails here
                groups.append((cells, make_context(config, cells[0], self.cache, self.reporter, splits_memo)))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                state.fail_group(cells, _failure(exc, "teacher/baseline failed: "))
                state.write(self.cache, time.perf_counter() - start)
        events = executor(groups, attacks, self.registry)
        for cells, ctx in groups:
            base = next(events)
            assert isinstance(base, GroupBase)
            if base.error is None:
                for evaluation in base.evaluations:
                    state.add(evaluation, ctx)
            for _cell in cells:
                outcome = next(events)
                assert isinstance(outcome, CellOutcome)
                if outcome.evaluation is not None:
                    state.add(outcome.evaluation, ctx, outcome.defense_report)
                else:
                    state.failures.append(outcome)
                    self.reporter.log(f"[red]cell failed[/]: {outcome.cell.label}: {outcome.error}")
                state.timings[outcome.cell.label] = round(outcome.seconds, 3)
                state.write(self.cache, time.perf_counter() - start)
            state.merge_timings(ctx.timings)
        wall = time.perf_counter() - start
        state.write(self.cache, wall)
        return RunResult(
            out, state.evaluations, state.records, [a.label for a in attacks], state.failures,
            self.cache.hits, self.cache.builds, wall,
        )


Executor = Any
"""``executor(groups, attacks, registry)`` yields, group by group in grid order, the group's :class:`GroupBase`
and then one :class:`CellOutcome` per cell (cells of a failed group fail with its error). How and where the work
runs (in this process, one cell at a time; or Ray tasks, groups and cells at once) is the executor's business."""


def _executor(config: RunConfig, cache: ArtifactCache) -> Executor:
    if config.executor == "local":

        def local(
            groups: list[tuple[list[Cell], RunContext]], attacks: list[Resolved], registry: Registry
        ) -> Iterator[GroupBase | CellOutcome]:
            for cells, ctx in groups:
                base = run_group_base(config, cells[0], attacks, ctx)
                yield base
                for cell in cells:
                    yield run_cell_after(config, cell, base, registry=registry, ctx=ctx)

        return local
    if config.executor == "ray":
        from kdbench.ray_executor import ray_executor

        return ray_executor(config, cache)
    raise KdbenchError(f"Unknown executor {config.executor!r}; use local or ray.")


@dataclass
class _RunState:
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
    attack = next(a for a in attacks if a.label == attack_label)
    student = e.target == "student"
    env = environment()
    return ResultRecord(
        run_id=run_id,
        task=ctx.task.name,
        protocol=ctx.task.distill_on,
        distiller=e.distiller.info.name if student and e.distiller else None,
        defense="+".join(d.info.name for d in e.defenses) if student else None,
        target=e.target,
        attack=attack.info.name,
        auc=m.auc,
        auc_ci=list(m.auc_ci),
        tpr_at_1pct_fpr=m.tpr_at_1pct_fpr,
        tpr_at_01pct_fpr=m.tpr_at_01pct_fpr,
        tpr_at_5pct_fpr=m.tpr_at_5pct_fpr,
        fpr_resolution=m.fpr_resolution,
        balanced_accuracy=m.balanced_accuracy,
        n_members=m.n_members,
        n_nonmembers=m.n_nonmembers,
        rouge_l=e.rouge_l,
        rouge_l_ci=list(e.rouge_l_ci),
        memorization=e.memorization,
        roc=m.roc,
        seed=ctx.seed,
        model=e.trained.ref,
        kdbench_version=__version__,
        git_commit=env["git_commit"],
        distiller_params=params_dict(e.distiller.instance.params) if student and e.distiller else {},
        defense_params={d.info.name: params_dict(d.instance.params) for d in e.defenses} if student else {},
        defense_report=defense_report if student else {},
        attack_params=params_dict(attack.instance.params),
        provenance=provenance,
    )
