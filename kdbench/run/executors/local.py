"""The in-process executor: one group, then its cells, one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kdbench.core.registry import Registry, Resolved
from kdbench.run.cells import CellOutcome, GroupBase, run_cell_after, run_group_base
from kdbench.run.config import RunConfig
from kdbench.run.context import RunContext
from kdbench.run.grid import Cell

Executor = Any
"""``executor(groups, attacks, registry)`` yields, group by group in grid order, the group's :class:`GroupBase`
and then one :class:`CellOutcome` per cell (cells of a failed group fail with its error). How and where the work
runs (in this process, one cell at a time; or Ray tasks, groups and cells at once) is the executor's business."""


def local_executor(config: RunConfig) -> Executor:
    """Each group's teacher and baseline, then its cells, in this process, in grid order."""

    def execute(
        groups: list[tuple[list[Cell], RunContext]], attacks: list[Resolved], registry: Registry
    ) -> Iterator[GroupBase | CellOutcome]:
        for cells, ctx in groups:
            base = run_group_base(config, cells[0], attacks, ctx)
            yield base
            for cell in cells:
                yield run_cell_after(config, cell, base, registry=registry, ctx=ctx)

    return execute
