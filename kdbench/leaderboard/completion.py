"""What to run to complete a board: the attacks some entries lack, as `kdbench run` commands.

A board ranks on the attacks every entry has; an entry that lacks attacks others have is ranked on that common
set only. The build lists these gaps so a maintainer can close them rather than read a board that compares less
than it could.
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kdbench.leaderboard.ranking import Board, Cell

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Gap:
    """Entries of one board that lack the same attacks, and the command that would add them."""

    task: str
    protocol: str
    entries: tuple[str, ...]
    attacks: tuple[str, ...]
    commands: tuple[str, ...]


def _value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def plugin_spec(name: str, params: dict[str, Any]) -> str:
    """``name:k=v,...`` with the scalar, non-null parameters (the others cannot be written on a command line)."""
    pairs = [f"{k}={_value(v)}" for k, v in sorted(params.items()) if v is not None and not isinstance(v, (dict, list))]
    return name + (":" + ",".join(pairs) if pairs else "")


def _defense_spec(cell: Cell) -> str:
    defense = cell.key.defense or "none"
    params = cell.key.config_dict().get("defense_params") or {}
    names = defense.split("+")
    return "+".join(plugin_spec(n, params.get(n) or {}) for n in names)


def run_command(cell: Cell, attack_keys: list[str]) -> str:
    """The `kdbench run` that adds ``attack_keys`` to ``cell`` for each of its seeds (same models, parameters)."""
    config = cell.key.config_dict()
    attacks = [plugin_spec(*json.loads(key)) for key in attack_keys]
    args = ["kdbench", "run", "--task", cell.key.task]
    args += ["--distiller", plugin_spec(cell.key.distiller or "", config.get("distiller_params") or {})]
    args += ["--defense", _defense_spec(cell), "--attack", ",".join(attacks)]
    args += ["--seed", ",".join(str(s) for s in cell.replicates)]
    for option, name in (("--teacher", "teacher_model"), ("--student", "model")):
        ref = config.get(name)
        if isinstance(ref, str) and not ref.startswith(BUILTIN_PREFIX):
            args += [option, ref]
    return shlex.join(args)


def gaps(boards: list[Board], labels: dict[str, str] | None = None) -> list[Gap]:
    """Per board, entries grouped by the attacks they lack, with one command per entry."""
    found = []
    for board in boards:
        groups: dict[tuple[str, ...], list[Cell]] = defaultdict(list)
        for cell in board.students:
            missing = tuple(board.missing(cell))
            if missing:
                groups[missing].append(cell)
        for missing, cells in sorted(groups.items()):
            names = tuple((labels or {}).get(k) or json.loads(k)[0] for k in missing)
            commands = tuple(run_command(c, list(missing)) for c in cells)
            found.append(Gap(board.task, board.protocol, tuple(c.key.name for c in cells), names, commands))
    return found
