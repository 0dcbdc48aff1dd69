"""Time ``kdbench run --distiller all --attack loss,zlib,lowercase,mink,mink++,ref`` cold (a fresh, empty
KDBENCH_CACHE_DIR) and warm (the same command again on the cache the cold run filled). Target: cold <= 15 min on a
2-core CPU for the default task.

    python benchmarks/distiller_grid.py                 # the default task (minutes: trains everything)
    python benchmarks/distiller_grid.py --small         # a reduced copy of it, for a quick check
    KDBENCH_GRID_SMALL=1 python benchmarks/distiller_grid.py

``--small`` runs a derived manifest (written to a temporary directory): the default task with 60 examples per
training role, micro models, 2 epochs and lighter evaluation, so the whole cold grid takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kdbench.tasks.manifest import find_task

TARGET_COLD_S = 15 * 60
SMALL = {
    "source": {"params": {"n_people": 40, "n_records": 220}},
    "splits": {"sizes": {"private": 60, "public": 60, "holdout": 60, "eval": 20}},
    "evaluation": {"n_attack": 40, "n_eval": 20, "max_new_tokens": 24, "memorization_new_tokens": 24,
                   "memorization_compare": 16, "bootstrap": 100},
    "models": {"teacher": "builtin:gpt2-micro", "student": "builtin:gpt2-micro", "vocab_size": 500,
               "max_prompt_tokens": 80, "max_total_tokens": 128},
    "training": {"teacher": {"lr": 3.0e-3, "epochs": 3, "batch_size": 16},
                 "baseline": {"lr": 3.0e-3, "epochs": 2, "batch_size": 16},
                 "student": {"lr": 3.0e-3, "epochs": 2, "batch_size": 16}},
}


def small_manifest(task: str, directory: Path) -> Path:
    """A reduced copy of ``task``'s manifest (see ``SMALL``), under a name of its own."""
    manifest: dict[str, Any] = yaml.safe_load(find_task(task).read_text(encoding="utf-8"))
    manifest = _merge(manifest, SMALL)
    manifest["name"] = f"{manifest['name']}-small"
    path = directory / f"{manifest['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def kdbench_command() -> list[str]:
    script = Path(sys.executable).with_name("kdbench")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from kdbench.cli import main; main()"]


def timed_run(task: str, cache: Path, out: Path, distillers: str, attacks: str) -> float:
    command = [*kdbench_command(), "run", "--task", task, "--distiller", distillers, "--attack", attacks,
               "--out", str(out), "--device", "cpu"]
    start = time.perf_counter()
    result = subprocess.run(command, env={**os.environ, "KDBENCH_CACHE_DIR": str(cache)}, capture_output=True,
                            text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        sys.exit(f"`{' '.join(command)}` failed ({result.returncode}):\n{output}")
    summary = result.stdout[result.stdout.rfind("Wrote") :]  # after the results table; rich wraps long lines
    print(" ".join(summary.split()))
    if "failed" in summary:
        sys.exit("Some cells failed; see run.json in the output directory (run again with --keep).")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="synthetic-pii")
    parser.add_argument("--small", action="store_true", default=os.environ.get("KDBENCH_GRID_SMALL") == "1")
    parser.add_argument("--distiller", default="all")
    parser.add_argument("--attack", default="loss,zlib,lowercase,mink,mink++,ref")  # the statistics attacks
    parser.add_argument("--keep", action="store_true", help="keep the cache and outputs (printed) afterwards")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    work = Path(tempfile.mkdtemp(prefix="kdbench-grid-"))
    try:
        task = str(small_manifest(args.task, work)) if args.small else args.task
        cache = work / "cache"
        print(f"task {task}{' (reduced)' if args.small else ''}; distillers {args.distiller}; attacks "
              f"{args.attack}; fresh cache {cache}; {os.cpu_count()} CPUs, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        cold = timed_run(task, cache, work / "cold", args.distiller, args.attack)
        warm = timed_run(task, cache, work / "warm", args.distiller, args.attack)
        target = "" if args.small else f", {'within' if cold <= TARGET_COLD_S else 'OVER'} the 15 min target"
        print(f"cold {cold:.1f}s ({cold / 60:.1f} min{target})")
        print(f"warm {warm:.1f}s")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
