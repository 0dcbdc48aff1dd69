"""Wall time of one grid with the local executor and with Ray (2 workers), side by side.

    python benchmarks/grid_executors.py [--task synthetic-pii] [--distiller kd,sft] [--seeds 0] [--cold]

Both start from one warm cache holding the teachers and baselines (built first, untimed), so the figures
compare how the executors run the cells; with ``--cold`` both start from an empty cache, so a grid of several
seeds also shows groups (each with its own teacher) running side by side on Ray. Ray gets a local instance with
2 CPUs and each task 1 thread; the local executor runs everything one after another with 1 thread, so results
are identical (checked here). For reference it also times the local executor with as many torch threads as
Ray has workers (results may differ in the last bits).
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


def run(args: list[str], env: dict[str, str], ray: bool = False) -> float:
    prefix = [sys.executable, "-m", "kdbench"]
    if ray:
        script = ("import ray, sys; ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False);"
                  "from kdbench.cli import main; sys.exit(main())")
        prefix = [sys.executable, "-c", script]
    start = time.perf_counter()
    subprocess.run([*prefix, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def aucs(out: Path) -> list[float]:
    return sorted(json.loads(line)["auc"] for line in (out / "results.jsonl").read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="synthetic-pii")
    parser.add_argument("--distiller", default="kd,sft")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cold", action="store_true", help="start both executors from an empty cache")
    args = parser.parse_args()
    grid = ["run", "--task", args.task, "--distiller", args.distiller, "--attack", "loss", "--seed", args.seeds]
    base = [*grid, "--threads", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KDBENCH_CACHE_DIR": str(Path(tmp) / "warm"), "RAY_USAGE_STATS_ENABLED": "0"}
        (Path(tmp) / "warm").mkdir()
        if not args.cold:  # a cell outside the timed grid, so that only the teachers and baselines are shared
            warm = ["run", "--task", args.task, "--distiller", "kd:kd_ratio=0.99", "--attack", "loss"]
            run([*warm, "--seed", args.seeds, "--out", f"{tmp}/w"], env)
        # Copy the warm cache (teacher + baseline) so that each executor starts from the same state.
        subprocess.run(["cp", "-r", f"{tmp}/warm", f"{tmp}/local-cache"], check=True)
        subprocess.run(["cp", "-r", f"{tmp}/warm", f"{tmp}/ray-cache"], check=True)
        subprocess.run(["cp", "-r", f"{tmp}/warm", f"{tmp}/threads-cache"], check=True)
        local = run([*base, "--out", f"{tmp}/local"], {**env, "KDBENCH_CACHE_DIR": f"{tmp}/local-cache"})
        threaded = [*grid, "--threads", "2", "--out", f"{tmp}/threads"]
        local_threads = run(threaded, {**env, "KDBENCH_CACHE_DIR": f"{tmp}/threads-cache"})
        ray = run([*base, "--executor", "ray", "--out", f"{tmp}/ray"],
                  {**env, "KDBENCH_CACHE_DIR": f"{tmp}/ray-cache"}, ray=True)
        same = aucs(Path(tmp) / "local") == aucs(Path(tmp) / "ray")
    start = "an empty cache" if args.cold else "cached teachers and baselines"
    print(f"grid: task {args.task}, distillers {args.distiller}, seeds {args.seeds}, attack loss, from {start}")
    print(f"local executor (1 thread):         {local:7.1f} s")
    print(f"local executor (2 threads):        {local_threads:7.1f} s")
    print(f"ray executor (2 workers x 1 cpu):  {ray:7.1f} s   (includes Ray start-up)")
    print(f"identical results: {same}")


if __name__ == "__main__":
    main()
