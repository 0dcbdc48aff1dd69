"""What ``kdbench run`` was asked to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.core.params import PluginSpec
from kdbench.run.grid import Grid


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
    force: bool = False  # write into a non-empty --out that holds another run (its kdbench outputs are replaced)

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
