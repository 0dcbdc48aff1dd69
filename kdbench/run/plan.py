"""Plugins resolved and the grid checked before any training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError, PluginError, TaskError
from kdbench.core.params import PluginSpec, build_params
from kdbench.core.registry import Registry, Resolved
from kdbench.defense.stack import DefenseStack
from kdbench.models.hub import config_positions, is_builtin, model_config
from kdbench.tasks.manifest import Task


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


def check_lengths(
    tasks: Sequence[Task], models: Sequence[tuple[str | None, str | None]], trust_remote_code: bool
) -> None:
    """Refuse, before any work, a task whose ``models.max_total_tokens`` exceeds what its teacher or student can
    take (e.g. ``dolly.yaml``'s 512 with the embedded tiny models' 256 positions): it would otherwise fail deep in
    training on the position embedding. Checked here for the embedded models and local model directories (no
    network); others are capped to their positions when they sample (``DistillJob.new_token_budget``)."""
    limits: dict[str, int | None] = {}
    for task in tasks:
        for teacher, student in models:
            for role, ref in (("teacher", teacher or task.models.teacher), ("student", student or task.models.student)):
                if ref not in limits:
                    try:
                        local = is_builtin(ref) or Path(ref).is_dir()
                        limits[ref] = config_positions(model_config(ref, trust_remote_code)) if local else None
                    except KdbenchError:
                        limits[ref] = None
                limit = limits[ref]
                if limit is not None and task.models.max_total_tokens > limit:
                    raise TaskError(
                        f"{task.path}: key 'models.max_total_tokens' is {task.models.max_total_tokens}, but the "
                        f"{role} {ref} takes at most {limit} positions. Set models.max_total_tokens to at most "
                        f"{limit} (and models.max_prompt_tokens below it) in a manifest that includes "
                        f"{task.path.name}, or use models with more positions."
                    )


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
