"""Time `kdbench leaderboard build` on 10,000 records.

The records are SYNTHETIC, made up for timing only (random numbers in valid ranges, every name and provenance
field says so); they are not measurements and must never be added to the leaderboard's data of record.

    PYTHONPATH=. python benchmarks/leaderboard_build.py [--records 10000] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdbench.leaderboard.site import build_site
from kdbench.results.records import ResultRecord

ATTACKS = ("loss", "zlib", "mink", "mink++", "reference")
SEEDS = range(5)
TASKS = tuple(f"synthetic-timing-{i}" for i in range(4))
DISTILLERS = tuple(f"distiller-{i}" for i in range(10))
DEFENSES = ("none", *(f"defense-{i}" for i in range(9)))
ROC_POINTS = 100


def _roc(auc: float) -> dict[str, list[float]]:
    """A smooth ROC curve with roughly the given AUC (tpr = fpr^k, AUC = 1/(k+1))."""
    k = (1 - auc) / auc
    fpr = [i / (ROC_POINTS - 1) for i in range(ROC_POINTS)]
    return {"fpr": fpr, "tpr": [f**k for f in fpr]}


def _record(
    rng: random.Random, task: str, seed: int, attack: str, target: str, cell: tuple[str, str] | None
) -> dict[str, Any]:
    auc = round(rng.uniform(0.5, 0.95), 4)
    rouge = round(rng.uniform(10, 30), 2)
    distiller, defense = cell or (None, None)
    return ResultRecord(
        run_id=f"synthetic-timing-run-{seed}",
        task=task,
        protocol="public",
        distiller=distiller,
        defense=defense,
        target=target,
        attack=attack,
        auc=auc,
        auc_ci=[auc - 0.03, min(1.0, auc + 0.03)],
        tpr_at_1pct_fpr=round((auc - 0.5) / 4, 4),
        tpr_at_01pct_fpr=round((auc - 0.5) / 10, 4),
        n_members=500,
        n_nonmembers=500,
        rouge_l=rouge,
        rouge_l_ci=[rouge - 1, rouge + 1],
        seed=seed,
        model="synthetic-model",
        kdbench_version="synthetic",
        tpr_at_5pct_fpr=round((auc - 0.5) / 2, 4),
        balanced_accuracy=round(auc - 0.1, 4),
        memorization={"members": 0.1, "nonmembers": 0.02, "gap": 0.08},
        roc=_roc(auc),
        distiller_params={"temperature": 2.0} if distiller else {},
        provenance={"synthetic": "timing only, not a measurement", "per_block_auc": [0.5, 0.52, 0.55, 0.51]},
    ).to_json()


def synthetic_records(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` valid synthetic records over tasks × seeds × attacks × (teacher, baseline, students).

    The grid holds 10,200 records; beyond that further rounds use new seeds, so records never repeat.
    """
    rng = random.Random(seed)
    targets: list[tuple[str, tuple[str, str] | None]] = [("teacher", None), ("baseline", None)]
    targets += [("student", (d, f)) for d in DISTILLERS for f in DEFENSES]
    grid = (
        (task, 100 * round_ + run_seed, attack, target, cell)
        for round_ in itertools.count()
        for task in TASKS
        for run_seed in SEEDS
        for attack in ATTACKS
        for target, cell in targets
    )
    for task, run_seed, attack, target, cell in itertools.islice(grid, n):
        yield _record(rng, task, run_seed, attack, target, cell)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument(
        "--out", type=Path, help="site directory (default: a temporary one, removed afterwards)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdbench-lb-bench-") as tmp:
        results = Path(tmp) / "synthetic-timing.jsonl"
        with results.open("w", encoding="utf-8") as handle:
            for record in synthetic_records(args.records):
                handle.write(json.dumps(record) + "\n")
        out = args.out or Path(tmp) / "site"
        start = time.perf_counter()
        report = build_site([results], out)
        seconds = time.perf_counter() - start
    print(
        f"leaderboard build: {report.records_read} synthetic records -> {report.pages} pages "
        f"({report.entries} entries, {report.boards} boards) in {seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
