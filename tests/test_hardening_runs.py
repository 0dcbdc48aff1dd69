"""Hostile runs (issue 18), as real `kdbench run` processes: a failing attack costs only its own numbers; --out is
never silently overwritten or mixed; run.json is written last and says how the run ended; interrupted writes
leave no temporaries; exit statuses follow docs/running.md."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.core.errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_USAGE
from kdbench.results.records import load_records
from tests.helpers import make_distribution
from tests.test_grid import _frozen, _interruptible

TINY = str(Path(__file__).parent / "fixtures" / "tiny-task.yaml")

BOOM = """
    from dataclasses import dataclass
    from kdbench.api import DefenseBase, hookimpl

    @dataclass(frozen=True)
    class Params:
        pass

    class Boom:
        name = "boom"
        description = "Always raises."
        Params = Params
        needs = frozenset()
        def __init__(self, params): self.params = params
        def score(self, inputs):
            raise RuntimeError("boom: this attack always fails")

    class NanReport(DefenseBase):
        name = "nanreport"
        description = "Changes nothing; reports a NaN."
        stages = frozenset({"teacher_outputs"})
        def transform_teacher_logits(self, logits):
            return logits
        def report(self):
            return {"measured": float("nan")}

    @hookimpl
    def register_attacks(register):
        register(Boom)

    @hookimpl
    def register_defenses(register):
        register(NanReport)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the runs: the `boom` attack installed, one cache for the module."""
    root = tmp_path_factory.mktemp("hostile")
    make_distribution(root / "site", "kdbench-boom", "kdbench_boom", BOOM, {"boom": "kdbench_boom"})
    return {**os.environ, "KDBENCH_CACHE_DIR": str(root / "cache"),
            "PYTHONPATH": f"{root / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def kdbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdbench", "run", "--task", TINY, "--distiller", "kd",
                           "--threads", "1", *args], env=env, capture_output=True, text=True, timeout=900)


def run_info(out: Path) -> dict[str, object]:
    info: dict[str, object] = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return info


@pytest.fixture(scope="module")
def failed_attack_run(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    out = tmp_path_factory.mktemp("boom") / "out"
    proc = kdbench(env, "--attack", "loss,boom", "--defense", "none,nanreport", "--out", str(out))
    return out, proc.stdout + proc.stderr, proc.returncode


@pytest.mark.slow
def test_a_failing_attack_fails_only_its_pairs(failed_attack_run: tuple[Path, str, int]) -> None:
    """`boom` raises on every target; `loss` works everywhere, but the nanreport student's loss record carries a
    NaN (in its defense report) and is never written. Everything else is kept."""
    out, output, code = failed_attack_run
    assert code == EXIT_FAILURES, output
    records = [r for r in load_records([out]) if not r.get("reference")]  # blind (a reference) runs by default
    assert sorted((r["target"], r["attack"], r["defense"]) for r in records) == [
        ("baseline", "loss", None), ("student", "loss", "none"), ("teacher", "loss", None)]
    info = run_info(out)
    failures = info["failures"]
    assert isinstance(failures, list) and len(failures) == 6  # 4 booms, the nanreport student's loss and blind
    booms = [f for f in failures if f["attack"] == "boom"]
    assert sorted(str(f["cell"]).split()[2] for f in booms) == ["baseline", "student", "student", "teacher"]
    assert all("boom: this attack always fails" in f["error"] for f in booms)
    invalid = [f for f in failures if f["attack"] != "boom"]
    assert sorted(f["attack"] for f in invalid) == ["blind", "loss"]
    assert all("nanreport" in f["cell"] and "invalid result: field 'defense_report.nanreport.measured' is not a "
               "finite number" in f["error"] for f in invalid)
    assert info["status"] == "failed" and info["records"] == len(load_records([out]))
    assert "6 attack(s) failed" in output and "Traceback" not in output
    assert "NaN" not in (out / "results.jsonl").read_text()
    scores = [json.loads(line) for line in next((out / "scores").glob("student-*.jsonl")).read_text().splitlines()]
    assert "loss" in scores[1] and "boom" not in scores[1]


@pytest.mark.slow
def test_run_json_is_written_last_and_names_its_results(failed_attack_run: tuple[Path, str, int]) -> None:
    out, _, _ = failed_attack_run
    info = run_info(out)
    results = (out / "results.jsonl").read_bytes()
    assert info["results_sha256"] == hashlib.sha256(results).hexdigest()
    assert info["records"] == len(results.splitlines()) and info["finished"]
    assert (out / "run.json").stat().st_mtime_ns >= (out / "results.jsonl").stat().st_mtime_ns


@pytest.mark.slow
def test_out_holding_another_run_is_refused_then_replaced_with_force(
    env: dict[str, str], failed_attack_run: tuple[Path, str, int], tmp_path: Path
) -> None:
    out, _, _ = failed_attack_run
    before = (out / "results.jsonl").read_bytes()
    refused = kdbench(env, "--attack", "loss", "--out", str(out))  # another configuration
    flat = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == EXIT_USAGE and "is not empty and holds no run of this configuration" in flat, flat
    assert "--force" in flat and (out / "results.jsonl").read_bytes() == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("not a run")
    assert kdbench(env, "--attack", "loss", "--out", str(other)).returncode == EXIT_USAGE  # no run.json at all

    stale = out / "scores" / "student-0123456789ab.jsonl"
    stale.write_text("{}\n")
    leftovers = [out / ".results.jsonl.0badc0de.tmp", out / ".run.json.0badc0de.tmp",
                 out / "scores" / ".teacher-x.jsonl.0badc0de.tmp"]
    for path in leftovers:
        path.write_text("half a write")
    forced = kdbench(env, "--attack", "loss", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert not stale.exists() and not any(path.exists() for path in leftovers)
    assert run_info(out)["status"] == "complete" and run_info(out)["failures"] == []
    assert {r["attack"] for r in load_records([out]) if not r.get("reference")} == {"loss"}
    assert len(list((out / "scores").glob("*.jsonl"))) == 3  # teacher, baseline, one student: nothing stale

    resumed = kdbench(env, "--attack", "loss", "--out", str(out))  # the same configuration resumes into it
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_says_so(tmp_path: Path, sig: signal.Signals) -> None:
    """Kill a real run while it trains: exit status 130, and run.json says interrupted (not a finished run)."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", "--task", TINY, "--distiller", "kd",
                             "--attack", "loss", "--threads", "1", "--out", str(out)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_interruptible)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # signal it while a model is being built
        building = (cache / "model").exists() and list((cache / "model").glob(".tmp-*"))
        if building and (out / "run.json").exists():
            if _frozen(proc) and list((cache / "model").glob(".tmp-*")):
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("the run never started training")
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert "Interrupted" in output and "Traceback" not in output
    info = run_info(out)
    results = (out / "results.jsonl").read_bytes()  # teacher and baseline records, if they were done
    assert info["status"] == "interrupted" and info["finished"] and info["records"] == len(results.splitlines())
    assert info["results_sha256"] == hashlib.sha256(results).hexdigest()
    assert not list(out.glob(".*.tmp"))
