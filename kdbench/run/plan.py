"""Plugins resolved and the grid checked before any training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError, PluginError
from kdbench.core.params import PluginSpec, build_params
from kdbench.core.registry import Registry, Resolved
from kdbench.defense.stack import DefenseStack
from kdbench.models import hub as models
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


def distiller_with_defaults(
    registry: Registry, spec: PluginSpec, *layers: Mapping[str, Mapping[str, Any]]
) -> PluginSpec:
    """``spec`` with parameter defaults for its plugin from ``layers`` (a task's, then a model family's: later
    layers win) beneath the parameters the user gave, which always win. Only keys the plugin's Params has are
    taken, so a preset never breaks a distiller that lacks, e.g., ``lm_coef``."""
    known = {f.name for f in dataclasses.fields(registry.get("distillers", spec.name).cls.Params)}
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update({k: str(v) for k, v in layer.get(spec.name, {}).items() if k in known})
    merged.update(dict(spec.raw))
    return PluginSpec(spec.name, tuple(merged.items()))


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
                    configs[ref] = models.model_config(ref, trust_remote_code)
                except KdbenchError:
                    configs[ref] = None
            for spec in distillers:
                defenses.check(configs[ref], spec.name)


def model_positions(refs: Sequence[str], trust_remote_code: bool = False) -> int | None:
    """The fewest positions any of ``refs`` takes, for the embedded models and local model directories (read
    without network); None when none of them can be read here (their limits apply when they sample)."""
    limits = []
    for ref in refs:
        if models.is_builtin(ref) or Path(ref).is_dir():  # presets and shipped checkpoints: read here
            try:
                limits.append(models.config_positions(models.model_config(ref, trust_remote_code)))
            except KdbenchError:
                continue
    return min(limits) if limits else None


def effective_lengths(task: Task, positions: int | None) -> tuple[int, int]:
    """(prompt, total) token caps for ``task`` on models of ``positions`` positions: the manifest's, or, when its
    ``max_total_tokens`` exceeds them (``dolly.yaml``'s 512 with the embedded models' 256), sequences capped at
    the positions, the prompt at half of them or less (room for the longest generation if that leaves more)."""
    prompt, total = task.models.max_prompt_tokens, task.models.max_total_tokens
    if positions is None or total <= positions:
        return prompt, total
    longest = max(task.evaluation.max_new_tokens, task.evaluation.memorization_new_tokens)
    return min(prompt, max(positions // 2, positions - longest)), positions


def length_caps(
    tasks: Sequence[Task], pairs: Sequence[tuple[str | None, str | None]], trust_remote_code: bool
) -> list[str]:
    """One line per task and model pair whose sequences will be capped (said once, before any work)."""
    lines = []
    for task in tasks:
        for teacher, student in pairs:
            refs = (teacher or task.models.teacher, student or task.models.student)
            positions = model_positions(refs, trust_remote_code)
            prompt, total = effective_lengths(task, positions)
            if total < task.models.max_total_tokens:
                lines.append(
                    f"{task.path}: key 'models.max_total_tokens' is {task.models.max_total_tokens}, but "
                    f"{' / '.join(refs)} take at most {positions} positions: sequences are capped at {total} tokens "
                    f"(prompts at {prompt}). Set models.max_total_tokens to at most {positions} in a manifest that "
                    f"includes {task.path.name} to choose the caps yourself."
                )
    return lines


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
