"""Grids: the product of the run's lists (tasks × seeds × students × distillers × defense stacks), from the
command line or a YAML grid file with the same keys. Cells are ordered so that the cells sharing a teacher and a
baseline (same task, seed and student) run together and those artifacts are built once."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError, ParameterError, unknown_name_message
from kdbench.core.params import PluginSpec, parse_specs
from kdbench.core.yamlfile import read_yaml

GRID_KEYS = ("distiller", "attack", "defense", "task", "seed", "student", "teacher", "family", "student_size")


@dataclass(frozen=True)
class Cell:
    """One student to distil and attack."""

    task: str
    seed: int
    teacher: str | None
    student: str | None
    distiller: PluginSpec
    defenses: tuple[PluginSpec, ...]

    @property
    def defense_label(self) -> str:
        return "+".join(str(d) for d in self.defenses)

    @property
    def label(self) -> str:
        student = f" student={self.student}" if self.student else ""
        return f"{self.task} seed={self.seed}{student} {self.distiller} [{self.defense_label}]"

    @property
    def group(self) -> tuple[str, int, str | None, str | None]:
        """Cells of one group share the teacher and the baseline."""
        return (self.task, self.seed, self.teacher, self.student)


@dataclass(frozen=True)
class Grid:
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    models: tuple[tuple[str | None, str | None], ...]  # (teacher, student) pairs
    distillers: tuple[PluginSpec, ...]
    defense_stacks: tuple[tuple[PluginSpec, ...], ...]
    attacks: tuple[PluginSpec, ...]
    extras: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        return [
            Cell(task, seed, teacher, student, distiller, stack)
            for task, seed, (teacher, student), distiller, stack in itertools.product(
                self.tasks, self.seeds, self.models, self.distillers, self.defense_stacks
            )
        ]


def parse_defense_stacks(values: tuple[str, ...] | list[str]) -> list[tuple[PluginSpec, ...]]:
    """``nonorm+bottleneck:B=64,temperature`` → [(nonorm, bottleneck:B=64), (temperature,)].

    ``+`` composes defenses into one stack; commas separate stacks (``key=value`` pieces continue the last spec).
    """
    stacks: list[list[PluginSpec]] = []
    for value in values:
        for piece in (p.strip() for p in value.split(",")):
            if not piece:
                continue
            if "=" in piece and ":" not in piece:
                if not stacks:
                    raise ParameterError(f"Parameter {piece!r} comes before any defense name.")
                last = stacks[-1].pop()
                stacks[-1].append(parse_specs(f"{last},{piece}")[0])
                continue
            parts = [p for p in piece.split("+") if p.strip()]
            stacks.append([parse_specs(part)[0] for part in parts])
    return [tuple(stack) for stack in stacks]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def grid_key(key: str) -> str:
    """A grid file's key in its singular form (``distillers`` → ``distiller``); unknown keys come back as given."""
    if key == "student_sizes":
        return "student_size"
    return key.rstrip("s") if key.rstrip("s") in GRID_KEYS else key


def load_grid_file(path: Path) -> dict[str, list[Any]]:
    """A YAML grid: the same keys as ``kdbench run``'s options, each a value or a list."""
    data = read_yaml(path, KdbenchError, "grid file") or {}
    if not isinstance(data, dict):
        raise KdbenchError(f"{path}: a grid file must be a mapping of {', '.join(GRID_KEYS)}.")
    normalised: dict[str, list[Any]] = {}
    given_as: dict[str, str] = {}
    for key, value in data.items():
        singular = grid_key(str(key))
        if singular not in GRID_KEYS:
            raise KdbenchError(f"{path}: " + unknown_name_message("grid key", str(key), GRID_KEYS))
        if singular in given_as:
            raise KdbenchError(f"{path}: keys {given_as[singular]!r} and {key!r} are the same setting; "
                               f"give one of them (a list).")
        given_as[singular] = str(key)
        normalised[singular] = [str(v) if singular != "seed" else v for v in _as_list(value)]
    for seed in normalised.get("seed", []):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise KdbenchError(f"{path}: key 'seed' must hold integers, got {seed!r}.")
    check_seeds(normalised.get("seed", []), f"{path}: key {given_as.get('seed', 'seed')!r}")
    return normalised


SEED_RANGE = (0, 2**32 - 1)  # what every generator seeded from it accepts (numpy's is the narrowest)


def check_seeds(seeds: list[int], where: str) -> None:
    """Refuse a seed out of range or given twice (each seed's cells would run, and be recorded, twice)."""
    low, high = SEED_RANGE
    for seed in seeds:
        if not low <= seed <= high:
            raise KdbenchError(f"{where}: seed {seed} is outside [{low}, {high}]; pick a seed in that range.")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise KdbenchError(f"{where}: seed {', '.join(map(str, repeated))} is given more than once; list each once.")
