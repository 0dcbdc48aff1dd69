"""Grids that survive: failure isolation, resume after a kill, a shared cache, and the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.core.params import PluginSpec
from kdbench.core.registry import get_registry
from kdbench.results.records import load_records
from kdbench.run.grid import load_grid_file, parse_defense_stacks
from tests.helpers import make_distribution

TINY = str(Path(__file__).parent / "fixtures" / "tiny-task.yaml")
GRID_ARGS = ["run", "--task", TINY, "--distiller", "kd", "--attack", "loss", "--seed", "0,1", "--threads", "1"]

EXPLODING = """
    from dataclasses import dataclass
    from kdbench import hookimpl

    @dataclass(frozen=True)
    class Params:
        pass

    class Explode:
        name = "explode"
        description = "Always fails."
        Params = Params
        def __init__(self, params): self.params = params
        def distill(self, job):
            raise RuntimeError("this distiller always fails")

    @hookimpl
    def register_distillers(register):
        register(Explode)
"""


def numbers(out: Path) -> dict[tuple, tuple]:
    """The measured values of a run, keyed by what they measure (run ids and timings differ between runs)."""
    return {
        (r["target"], r["seed"], r["distiller"], r["defense"], r["attack"]):
            (r["auc"], tuple(r["auc_ci"]), r["tpr_at_1pct_fpr"], r["rouge_l"], r["memorization"]["members"])
        for r in load_records([out])
    }


def _interruptible() -> None:
    """Give the child the default SIGINT disposition. A test suite started in the background by a
    non-interactive shell (`cmd &`) inherits SIGINT *ignored*, and Python then never raises KeyboardInterrupt:
    the interrupted run would just finish."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kdbench(args: list[str], cache: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "kdbench", *args], env=env, text=True, preexec_fn=_interruptible,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted local grid: two seeds, so two teachers and two baselines."""
    root = tmp_path_factory.mktemp("reference")
    proc = kdbench([*GRID_ARGS, "--out", str(root / "out")], root / "cache")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return root / "out"


def test_defense_stacks_and_grid_files(tmp_path: Path) -> None:
    assert parse_defense_stacks(["nonorm+bottleneck:B=64,temperature"]) == [
        (PluginSpec("nonorm"), PluginSpec("bottleneck", (("B", "64"),))),
        (PluginSpec("temperature"),),
    ]
    grid = tmp_path / "grid.yaml"
    grid.write_text("distillers: [kd, sft]\nattack: loss\nseeds: [0, 1]\n")
    assert load_grid_file(grid) == {"distiller": ["kd", "sft"], "attack": ["loss"], "seed": [0, 1]}
    grid.write_text("distillerz: kd\n")
    code = CliRunner().invoke(main, ["run", "--grid", str(grid)])
    assert code.exit_code != 0 and "distillerz" in code.output


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_others_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(tmp_path / "site", "kdbench-explode", "kdbench_explode", EXPLODING,
                      {"explode": "kdbench_explode"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, ["run", "--task", TINY, "--distiller", "explode,kd", "--attack", "loss",
                                           "--out", str(tmp_path / "out")])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 1, result.output
    assert "1 cell(s) failed" in result.output and "this distiller always fails" in result.output
    records = load_records([tmp_path / "out"])
    assert {(r["target"], r["distiller"]) for r in records} == {("teacher", None), ("baseline", None),
                                                               ("student", "kd")}
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(info["failures"]) == 1 and "explode" in info["failures"][0]["cell"]
    assert "RuntimeError" in info["failures"][0]["traceback"]


def _complete(cache: Path) -> set[str]:
    return {p.parent.name for p in (cache / "model").glob("*/spec.json")} if (cache / "model").exists() else set()


def _frozen(proc: subprocess.Popen[str]) -> bool:
    """SIGSTOP ``proc`` and wait until the kernel shows it stopped; False if it has already exited."""
    proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{proc.pid}/stat")
    for _ in range(200):
        if proc.poll() is not None:
            return False
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("T", "t"):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_grid_resumes_without_retraining(reference: Path, tmp_path: Path, sig: signal.Signals) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = kdbench([*GRID_ARGS, "--out", str(out)], cache)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill mid-training, after one model has finished
        if _complete(cache) and list((cache / "model").glob(".tmp-*")):
            # Freeze it, then look again: on a loaded machine the build seen above may have finished (even the
            # whole run) before the signal would land. Only a run frozen mid-build is interrupted.
            if _frozen(proc) and _complete(cache) and list((cache / "model").glob(".tmp-*")):
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("the run never reached a second training stage")
    finished_before = _complete(cache)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)  # a SIGINT is handled once the process runs again
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output[-4000:]

    again = kdbench([*GRID_ARGS, "--out", str(out)], cache)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    info = json.loads((out / "run.json").read_text())
    rebuilt = {b.split("/")[1] for b in info["cache"]["builds"] if b.startswith("model/")}
    assert not any(key.startswith(b) for key in finished_before for b in rebuilt)  # nothing finished was retrained
    assert numbers(out) == numbers(reference)
    assert not list((cache / "model").glob(".tmp-*"))


@pytest.mark.slow
def test_two_processes_share_one_cache(reference: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [kdbench([*GRID_ARGS, "--out", str(tmp_path / f"out{i}")], cache) for i in range(2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output
    assert numbers(tmp_path / "out0") == numbers(tmp_path / "out1") == numbers(reference)
    builds = [json.loads((tmp_path / f"out{i}" / "run.json").read_text())["cache"]["builds"] for i in range(2)]
    assert not set(builds[0]) & set(builds[1])  # every artifact was built by exactly one process
    assert not list(cache.glob("*/.tmp-*"))


@pytest.mark.slow
def test_ray_executor_matches_local(reference: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    env_extra = {"RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env_extra)
    script = (
        "import ray, sys; ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False);"
        "from kdbench.cli import main; sys.exit(main())"
    )
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", script, *GRID_ARGS, "--executor", "ray", "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert numbers(tmp_path / "out") == numbers(reference)


RAY_MAIN = (  # a local 2-CPU Ray instance, then the CLI
    "import ray, sys; ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False);"
    "from kdbench.cli import main; sys.exit(main())"
)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failed_teacher_fails_its_group_only(tmp_path: Path, executor: str) -> None:
    """Two groups (two student bases): the second's base cannot be loaded, so its baseline, and with it its
    cells, fail with that reason; the first group's records are complete, and the exit status is 1."""
    if executor == "ray":
        pytest.importorskip("ray")
    missing = tmp_path / "no-such-model"
    args = ["run", "--task", TINY, "--distiller", "kd,sft", "--attack", "loss", "--threads", "1",
            "--student", f"builtin:gpt2-micro,{missing}", "--executor", executor, "--out", str(tmp_path / "out")]
    prefix = [sys.executable, "-c", RAY_MAIN] if executor == "ray" else [sys.executable, "-m", "kdbench"]
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(tmp_path / "cache"), "RAY_ADDRESS": "",
           "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    records = load_records([tmp_path / "out"])
    assert {r["provenance"]["student_model"] for r in records} == {"builtin:gpt2-micro"}
    assert sorted((r["target"], r["distiller"]) for r in records if not r.get("reference")) == [
        ("baseline", None), ("student", "kd"), ("student", "sft"), ("teacher", None)]
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(info["failures"]) == 2
    for failure in info["failures"]:
        assert failure["error"].startswith("teacher/baseline failed: ")
        assert f"{missing}: no such model directory" in failure["error"]
        assert "Traceback" in failure["traceback"]
    assert "2 cell(s) failed" in proc.stdout


@pytest.mark.slow
def test_interrupted_ray_grid_resumes(reference: Path, tmp_path: Path) -> None:
    """Ctrl-C on the Ray driver while its tasks build models: it exits non-zero (cancelling what still runs);
    the same command again completes with the uninterrupted local run's results and leaves no half-built
    artifact."""
    pytest.importorskip("ray")
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(cache), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-c", RAY_MAIN, *GRID_ARGS, "--executor", "ray", "--out", str(out)]
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_interruptible)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _complete(cache) and list((cache / "model").glob(".tmp-*")):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the Ray run never reached a second training stage")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output[-4000:]
    assert "Interrupted" in output

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert numbers(out) == numbers(reference)
    assert not list((cache / "model").glob(".tmp-*"))
