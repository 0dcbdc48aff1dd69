"""Run a grid on Ray (an existing engine, not a home-made scheduler). Every group's teacher-and-baseline and
every cell is a Ray task asking for the CPUs/GPUs it needs; a cell task depends on its group's base task, so
Ray starts it as soon as that teacher exists, and groups proceed side by side (a cluster is never idle while
one teacher trains). Artifacts go to the shared cache directory, whose locks make concurrent builds of the same
artifact safe. Results equal the local executor's for the same seeds and the same number of torch threads per
task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import KdbenchError
from kdbench.core.registry import Registry, Resolved
from kdbench.run.cells import CellOutcome, GroupBase, run_cell_after, run_group_base
from kdbench.run.config import RunConfig
from kdbench.run.context import RunContext
from kdbench.run.grid import Cell


def ray_executor(config: RunConfig, cache: ArtifactCache) -> Any:
    try:
        import ray
    except ImportError:
        raise KdbenchError("--executor ray needs Ray: pip install 'kdbench[ray]'.") from None
    if not ray.is_initialized():
        ray.init(
            address=config.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    options = {"num_cpus": config.threads or 1, "num_gpus": 1 if config.device == "cuda" else 0, "max_retries": 0}
    remote_base: Any = ray.remote(run_group_base).options(**options)
    remote_cell: Any = ray.remote(run_cell_after).options(**options)

    def execute(
        groups: list[tuple[list[Cell], RunContext]], attacks: list[Resolved], registry: Registry
    ) -> Iterator[GroupBase | CellOutcome]:
        submitted: list[tuple[Any, list[Any]]] = []
        for cells, _ctx in groups:  # every task at once: Ray runs each when its inputs and resources are there
            base = remote_base.remote(config, cells[0], cache_root=cache.root)
            submitted.append((base, [remote_cell.remote(config, cell, base, cache_root=cache.root) for cell in cells]))
        try:
            for base, outcomes in submitted:  # in grid order: results.jsonl is ordered like the local executor's
                yield ray.get(base)
                for ref in outcomes:
                    yield ray.get(ref)
        except BaseException:  # an interrupted or failed driver leaves no work running on the cluster
            for base, outcomes in submitted:
                for ref in (base, *outcomes):
                    ray.cancel(ref, force=True)
            raise

    return execute
