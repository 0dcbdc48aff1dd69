"""How a cell's cost grows with the task: the same cell on growing slices of real Dolly.

For each size N it writes a temporary task (``tasks/dolly.yaml`` with the [Z] protocol, N private and N public
records, the embedded tiny models, one epoch per model), runs ``kdbench run`` on it cold (a fresh cache) in a
child process and prints, per size: wall time per stage (``run.json``), the child's peak RSS (``wait4``), and the
cache's bytes per artifact kind; then each figure's growth exponent b in figure ~ N^b (least squares on log-log).
Targets (issue 21): peak RSS sub-linear (ideally flat beyond the models and one batch), cache bytes and time at
most linear.

    nice python benchmarks/scaling.py --data-dir ../shared/data [--sizes 500,1500,5500] [--distiller kd]
        [--attack loss,mink,zlib] [--teacher-outputs cached|live|auto] [--json out.json]

The Dolly file is read in place (never copied); the task file points at it through ``--data-dir``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kdbench.tasks import task_data

ROOT = Path(__file__).resolve().parent.parent
DOLLY = "databricks-dolly-15k.jsonl"


def task_file(directory: Path, size: int, data_dir: Path) -> Path:
    """The real Dolly task, cut to ``size`` private and public records, with the tiny embedded models."""
    task = yaml.safe_load((ROOT / "tasks" / "dolly.yaml").read_text())
    task["name"] = f"dolly-scaling-{size}"
    task["source"]["sha256"] = hashlib.sha256((data_dir / DOLLY).read_bytes()).hexdigest()  # the local release
    task["splits"]["sizes"] = records(size, data_dir)
    n_attack = min(size, 1000)
    task["evaluation"] = {
        "n_attack": n_attack, "n_eval": 100, "max_new_tokens": 32, "memorization_new_tokens": 32,
        "memorization_compare": 16, "bootstrap": 200,
    }
    task["models"] = {
        "teacher": "builtin:gpt2-tiny-teacher", "student": "builtin:gpt2-tiny-student", "vocab_size": 2000,
        "max_prompt_tokens": 192, "max_total_tokens": 256,  # the tiny models hold 256 positions
    }
    recipe = {"lr": 2.0e-3, "epochs": 1, "batch_size": 16}
    task["training"] = {"teacher": recipe, "baseline": recipe, "student": recipe}
    path = directory / f"dolly-scaling-{size}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


@functools.cache
def role_sizes(data_dir: Path) -> dict[str, int]:
    """How many rows the full Dolly task gives each split role (the [Z] protocol: 5,498 private, 5,502 public)."""
    splits = task_data(ROOT / "tasks" / "dolly.yaml", data_dir=data_dir).splits
    return {role: len(splits.roles[role]) for role in ("private", "public")}


def records(size: int, data_dir: Path) -> dict[str, int]:
    """The private and public records a size asks for, capped at what the protocol gives each role."""
    return {role: min(size, available) for role, available in role_sizes(data_dir).items()}


def run_cell(size: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"kdbench-scaling-{size}-") as tmp:
        work = Path(tmp)
        task = task_file(work, size, args.data_dir)
        env = {**os.environ, "KDBENCH_CACHE_DIR": str(work / "cache"), "KDBENCH_TEACHER_OUTPUTS": args.teacher_outputs}
        command = [
            sys.executable, "-m", "kdbench", "run", "--task", str(task), "--distiller", args.distiller,
            "--attack", args.attack, "--data-dir", str(args.data_dir), "--out", str(work / "out"),
            "--device", "cpu", "--threads", str(args.threads),
        ]
        log = work / "stderr.txt"  # a file, not a pipe: a long run's progress output would fill a pipe and stall it
        start = time.perf_counter()
        with log.open("w") as err:
            child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"kdbench run failed for size {size} (exit {os.waitstatus_to_exitcode(status)}):\n"
                             f"{log.read_text()[-4000:]}")
        info = json.loads((work / "out" / "run.json").read_text())
        if info["failures"]:
            raise SystemExit(f"size {size}: {info['failures'][0]['error']}\n{info['failures'][0]['traceback']}")
        stages = {("cell (distil + attack)" if " seed=" in k else k): v for k, v in info["wall_time_per_stage"].items()}
        return {
            "size": size,
            "records": records(size, args.data_dir),
            "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "stages_s": stages,
            "cache_bytes": cache_bytes(work / "cache"),
            "teacher_outputs": _teacher_output_choices(info),
        }


def cache_bytes(root: Path) -> dict[str, int]:
    """Bytes on disk per artifact kind (the cache's top-level directories)."""
    out: dict[str, int] = {}
    for kind in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        out[kind.name] = sum(f.stat().st_size for f in kind.rglob("*") if f.is_file())
    return out


def _teacher_output_choices(info: dict[str, Any]) -> Any:
    return info.get("teacher_outputs")


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """b in value ~ size^b, least squares on log-log (None when a value is not positive)."""
    if len(sizes) < 2 or any(v <= 0 for v in values):
        return None
    xs, ys = [math.log(s) for s in sizes], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def report(rows: list[dict[str, Any]]) -> None:
    sizes = [r["size"] for r in rows]
    stages = sorted({s for r in rows for s in r["stages_s"]})
    kinds = sorted({k for r in rows for k in r["cache_bytes"]})
    width = max([24, *(len(s) + 6 for s in stages), *(len(k) + 13 for k in kinds)])
    print(f"{'records (private = public)':<{width}}" + "".join(f"{s:>12}" for s in sizes) + f"{'exponent':>10}")

    def line(name: str, values: list[float], fmt: str) -> None:
        b = exponent(sizes, values)
        growth = f"{b:>10.2f}" if b is not None else f"{'-':>10}"
        print(f"{name:<{width}}" + "".join(f"{v:>12{fmt}}" for v in values) + growth)

    line("wall time (s)", [r["wall_s"] for r in rows], ".1f")
    line("peak RSS (MB)", [r["peak_rss_mb"] for r in rows], ".0f")
    for stage in stages:
        line(f"  {stage} (s)", [r["stages_s"].get(stage, 0.0) for r in rows], ".1f")
    for kind in kinds:
        line(f"  cache {kind} (MB)", [r["cache_bytes"].get(kind, 0) / 1e6 for r in rows], ".2f")
    line("  cache total (MB)", [sum(r["cache_bytes"].values()) / 1e6 for r in rows], ".2f")
    for r in rows:
        print(f"records at {r['size']}: {r['records']['private']:,} private, {r['records']['public']:,} public")
    for r in rows:
        if r["teacher_outputs"]:
            print(f"teacher outputs at {r['size']}: {json.dumps(r['teacher_outputs'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sizes", default="500,1500,5500")
    parser.add_argument("--distiller", default="kd")
    parser.add_argument("--attack", default="loss,mink,zlib")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--teacher-outputs", choices=["cached", "live", "auto"], default="cached",
                        help="the teacher's source in the cell (default cached: the cache's cost is measured)")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    if not (args.data_dir / DOLLY).is_file():
        raise SystemExit(f"{args.data_dir / DOLLY} not found: pass --data-dir (the directory holding {DOLLY}).")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(run_cell(size, args))
        print(f"size {size}: {rows[-1]['wall_s']} s, peak RSS {rows[-1]['peak_rss_mb']} MB", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    report(rows)


if __name__ == "__main__":
    main()
