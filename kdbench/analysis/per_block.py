"""Per-block privacy risk (METHODS.md §6) of a model on disk with two sample files, or of every scored model of a
finished run, found in the artifact cache by the model keys its score files record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.analysis.audit import AuditHost, model_ref, read_samples
from kdbench.analysis.blocks import block_report, per_block_risk
from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import KdbenchError
from kdbench.core.types import TrainedModel
from kdbench.models import hub as models
from kdbench.run.cells import attack_samples
from kdbench.scoring.context import ScoringContext, external_model
from kdbench.tasks.manifest import load_task
from kdbench.tasks.splits import make_splits


def analyse_model(
    model: str, members: Path, nonmembers: Path, device: str, batch_size: int, options: dict[str, Any]
) -> tuple[list[dict[str, Any]], tuple[int, int]]:

    samples = (read_samples(members, "member"), read_samples(nonmembers, "non-member"))
    target = external_model(model_ref(model, "model"), "target")
    host = AuditHost(target, cache=ArtifactCache(), device=models.resolve_device(device), batch_size=batch_size)
    return [_report(host, target, "model", *samples, options)], (len(samples[0]), len(samples[1]))


def analyse_run(
    run_dir: Path, targets: set[str], device: str, batch_size: int, options: dict[str, Any]
) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """Every scored model of the run (scores/*.jsonl name its model key and samples), on the attack samples of
    the run's task that those ids belong to, encoded as the run encoded them."""

    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KdbenchError(f"{run_dir} is not a finished kdbench run directory (run.json: {exc}).") from None
    root = Path(info.get("cache", {}).get("root", ""))
    cache = ArtifactCache(root) if root.is_dir() else ArtifactCache()
    data_dir = info.get("command", {}).get("data_dir")
    tasks = []
    for group in info.get("groups", []):
        task = load_task(group["task"]["manifest"])
        members, nonmembers = attack_samples(task, make_splits(task, data_dir=Path(data_dir) if data_dir else None))
        tasks.append((task, members, nonmembers))
    reports: list[dict[str, Any]] = []
    sizes = (0, 0)
    for scores_file in sorted((run_dir / "scores").glob("*.jsonl")):
        meta, ids = _scores_meta(scores_file)
        if meta.get("target") not in targets:
            continue
        match = next(((t, m, n) for t, m, n in tasks if [e.id for e in m + n] == ids), None)
        if match is None:
            raise KdbenchError(f"{scores_file}: its samples match none of the run's tasks; was the task changed?")
        task, members, nonmembers = match
        path = cache.find("model", meta["model_key"])
        if path is None:
            raise KdbenchError(f"The {meta['target']} model of {run_dir} is not in the cache {cache.root}; rerun the "
                               "same `kdbench run` to rebuild it (or point KDBENCH_CACHE_DIR at the run's cache).")
        target = TrainedModel(meta["target"], meta.get("label", meta["target"]), meta["model_key"], path, str(path))
        host = AuditHost(
            target, cache=cache, device=models.resolve_device(device), batch_size=batch_size, template=task.template,
            max_tokens=task.models.max_total_tokens, max_prompt_tokens=task.models.max_prompt_tokens,
        )
        reports.append(_report(host, target, meta["target"], members, nonmembers, options))
        sizes = (len(members), len(nonmembers))
    if not reports:
        raise KdbenchError(f"No scored {'/'.join(sorted(targets))} model in {run_dir / 'scores'}.")
    return reports, sizes


def _scores_meta(path: Path) -> tuple[dict[str, Any], list[str]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[0].get("_meta", {}), [row["id"] for row in lines[1:]]


def _report(host: Any, target: Any, name: str, members: Sequence[Any], nonmembers: Sequence[Any],
            options: dict[str, Any]) -> dict[str, Any]:

    scoring = ScoringContext(host, target, [*members, *nonmembers])
    return block_report(scoring, name, per_block_risk(scoring, len(members), **options))
