"""What a cold `dolly-study-tiny` run costs, estimated from a smaller measured one (docs/tasks.md).

Runs the study's grid (`--distiller all --attack loss,zlib,mink,mink++,ref`) cold, in a fresh cache, on the study
task with every role and attack sample scaled by --fraction (same models, lengths, epochs), then extrapolates
linearly to the full task: training, scoring and generation all grow with the number of examples they touch.

    PYTHONPATH=. python benchmarks/study_cost.py --data-dir ../shared/data [--fraction 0.25] [--threads 2]

Prints wall time and CPU time (user + system of the run). On a shared machine wall time is inflated by others'
load; CPU time on one core is an upper bound for a quiet 2-core run's wall time (torch uses both cores in the
matrix products), so the estimate is given from both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdbench.tasks.manifest import available_tasks, load_task

ATTACKS = "loss,zlib,mink,mink++,ref"
BUDGET_S = 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    study = load_task("dolly-study-tiny")
    sizes = {role: max(2, round(n * args.fraction)) for role, n in study.sizes.items()}
    n_attack = max(2, round(study.evaluation.n_attack * args.fraction))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = root / "study-scaled.yaml"
        manifest.write_text(
            f"include: {available_tasks()['dolly-study-tiny'].resolve()}\nname: dolly-study-tiny-scaled\n"
            f"splits:\n  sizes: {json.dumps(sizes)}\n"
            f"evaluation: {{n_attack: {n_attack}, n_eval: {sizes['eval']}}}\n",
            encoding="utf-8",
        )
        command = [sys.executable, "-m", "kdbench", "run", "--task", str(manifest), "--data-dir", str(args.data_dir),
                   "--distiller", "all", "--attack", ATTACKS, "--threads", str(args.threads),
                   "--out", str(root / "run")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, "KDBENCH_CACHE_DIR": str(root / "cache")}, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        timings = json.loads((root / "run" / "run.json").read_text("utf-8")).get("wall_time_per_stage", {})
    scale = 1 / args.fraction
    print(f"scaled run: sizes {sizes}, n_attack {n_attack}; exit {done.returncode}")
    print(f"  wall {wall:.0f} s, CPU {cpu:.0f} s (user + system)")
    print(f"  stage timings (wall): {json.dumps(timings)}")
    for label, seconds in (("wall", wall), ("CPU", cpu)):
        estimate = seconds * scale
        verdict = "within" if estimate <= BUDGET_S else "OVER"
        print(f"full study estimated from {label}: {estimate / 60:.0f} min ({verdict} the {BUDGET_S // 60} min budget)")


if __name__ == "__main__":
    main()
