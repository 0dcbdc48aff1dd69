"""Cold and warm wall time of the README's main job on the embedded default task, with the stage breakdown.

    python benchmarks/default_run.py [--distiller kd --attack mink ...]

Cold: a fresh, empty cache (tokenizer, teacher, baseline and student are trained). Warm: the same command again
on that cache (everything is reused). Targets (issues 2 and 15): cold <= 180 s, warm <= 30 s on a 2-core CPU.
The breakdown is each run's ``run.json`` ``wall_time_per_stage`` (stages nest: a cell's time includes its attacks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str], env: dict[str, str], out: str) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdbench", "run", *args, "--out", out], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stages = json.loads((Path(out) / "run.json").read_text()).get("wall_time_per_stage", {})
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distiller", default="kd")
    parser.add_argument("--attack", default="mink")
    parser.add_argument("--task", default="synthetic-pii")
    args = parser.parse_args()
    command = ["--distiller", args.distiller, "--attack", args.attack, "--task", args.task]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KDBENCH_CACHE_DIR": os.path.join(tmp, "cache")}
        cold, cold_stages = timed(command, env, os.path.join(tmp, "cold"))
        warm, warm_stages = timed(command, env, os.path.join(tmp, "warm"))
    print(f"kdbench run {' '.join(command)}  (cpu threads: {os.cpu_count()})")
    print(f"cold run: {cold:7.1f} s   (target <= 180 s)")
    print(f"warm run: {warm:7.1f} s   (target <= 30 s)")
    print(f"\n{'stage (s)':<40} {'cold':>8} {'warm':>8}")
    for stage in sorted(set(cold_stages) | set(warm_stages), key=lambda s: -cold_stages.get(s, 0.0)):
        print(f"{stage:<40} {cold_stages.get(stage, 0.0):8.1f} {warm_stages.get(stage, 0.0):8.1f}")


if __name__ == "__main__":
    main()
