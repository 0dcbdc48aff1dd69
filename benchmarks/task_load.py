"""How long `kdbench tasks show dolly --data-dir ../shared/data` takes (a fresh process: imports, reading the
13 MB Dolly file, splitting, hashing every role), for this working tree and, with ``--before REV``, for an earlier
revision of kdbench, timed alternately in one run so both see the same machine load. Target: after <= 1.5x before
(issue 17: task data loads through `datasets`, which takes most of a second to import).

    python benchmarks/task_load.py [--before REV] [--repeats 5] [--task dolly] [--data-dir ../shared/data]

Each tree runs from a temporary directory of links (or, for REV, a `git archive` copy) on PYTHONPATH, with a fresh
KDBENCH_CACHE_DIR: the first run of a tree is reported apart as "cold" (this tree prepares its Arrow cache of the
file there, once per file content); the medians are over the warm runs that follow. `tasks list` (no data read)
is timed the same way: it must not pay for importing `datasets`. Wall and CPU (user + sys) are per process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> directory in the repository (pyproject's [tool.setuptools.package-dir])
PACKAGES = {"kdbench": "kdbench", "kdbench_tasks": "tasks", "kdbench_plugins": "plugins",
            "kdbench_leaderboard": "leaderboard"}
TARGET = 1.5


def tree_of_links(source: Path, into: Path) -> Path:
    """``into`` with one link per importable package of the checkout at ``source``."""
    into.mkdir(parents=True)
    for name, directory in PACKAGES.items():
        if (source / directory).is_dir():
            (into / name).symlink_to(source / directory)
    return into


def tree_at(revision: str, into: Path) -> Path:
    """kdbench as of ``revision`` (git archive of this repository), laid out like :func:`tree_of_links`."""
    source = into / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return tree_of_links(source, into / "tree")


def check_imports(tree: Path, env: dict[str, str]) -> None:
    """Refuse to time a tree whose imports resolve elsewhere (e.g. to the installed kdbench)."""
    code = "import kdbench, kdbench_tasks; print(kdbench.__file__); print(kdbench_tasks.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True, text=True)
    for line in done.stdout.split():
        if not Path(line).absolute().is_relative_to(tree):
            raise SystemExit(f"{tree}: imports resolve to {line}, not this tree; not timing it.")


def run_once(tree: Path, env: dict[str, str], args: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one `python -m kdbench ARGS` in ``tree``."""
    import time

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"`kdbench {' '.join(args)}` failed in {tree}:\n{done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="a git revision to compare with (e.g. the commit before "
                        "`datasets`-backed loading)")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per tree and command")
    parser.add_argument("--task", default="dolly")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    options = parser.parse_args()
    commands = {"show": ["tasks", "show", options.task, "--data-dir", str(options.data_dir.resolve())],
                "list": ["tasks", "list"]}
    with tempfile.TemporaryDirectory(prefix="kdbench-task-load-") as scratch:
        trees = {"after": tree_of_links(ROOT, Path(scratch) / "after")}
        if options.before:
            trees = {"before": tree_at(options.before, Path(scratch) / "before"), **trees}
        envs = {}
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree), "KDBENCH_CACHE_DIR": str(Path(scratch) / f"cache-{label}")}
            env.pop("KDBENCH_DATA_DIR", None)
            check_imports(tree, env)
            envs[label] = env
        cold = {label: run_once(tree, envs[label], commands["show"]) for label, tree in trees.items()}
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(options.repeats):  # alternate the trees: both see the same load on a shared machine
            for command, args in commands.items():
                for label, tree in trees.items():
                    times.setdefault((label, command), []).append(run_once(tree, envs[label], args))
    print(f"kdbench {' '.join(commands['show'])}  ({options.repeats} warm runs each; wall / cpu seconds)")
    for label in trees:
        tag = f"{label} ({options.before})" if label == "before" else f"{label} (working tree)"
        cold_wall, cold_cpu = cold[label]
        for command in commands:
            walls, cpus = zip(*times[(label, command)], strict=True)
            print(f"  {tag:28} {command:5} median {statistics.median(walls):5.2f} / {statistics.median(cpus):5.2f}"
                  f"   min {min(walls):5.2f} / {min(cpus):5.2f}")
        print(f"  {tag:28} show  cold (first run, fresh cache) {cold_wall:5.2f} / {cold_cpu:5.2f}")
    if "before" in trees:
        for command in commands:
            ratio = (statistics.median(w for w, _ in times[("after", command)])
                     / statistics.median(w for w, _ in times[("before", command)]))
            verdict = f"target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}" if command == "show" else ""
            print(f"  after / before, {command} median wall: {ratio:.2f}x  {verdict}")


if __name__ == "__main__":
    main()
