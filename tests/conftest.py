"""Shared fixtures: a tiny task and one real tiny `kdbench run` whose results other tests read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from kdbench.cli import main

if TYPE_CHECKING:
    from tests.attack_helpers import AttackWorld

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TASK = FIXTURES / "tiny-task.yaml"
# The real task data (Dolly-15k's original release, MiniLLM's utility sets) beside the repository, as CI has it:
# never copied into the repository. See its README.md.
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data`` (the real task data); tests that need it are skipped, saying why, where it is absent."""
    if not (REAL_DATA / "databricks-dolly-15k.jsonl").is_file():
        pytest.skip(f"real task data not found at {REAL_DATA} (../shared/data beside the repository, as in CI); "
                    "these tests check the shipped tasks against it")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_task() -> Path:
    return TINY_TASK


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kdbench-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test uses the session's temporary cache, never the user's ~/.cache/kdbench."""
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(cache_dir))
    # distillers read cached teacher outputs, not a source chosen on timing: tests that count teacher calls or
    # cache builds stay deterministic (tests/test_teacher_outputs.py tests the measured choice itself)
    monkeypatch.setenv("KDBENCH_TEACHER_OUTPUTS", "cached")


@pytest.fixture(scope="session")
def small_run_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A directory with results.jsonl + run.json from a real tiny run (kd, loss and mink)."""
    out = tmp_path_factory.mktemp("small-run") / "run"
    result = CliRunner().invoke(
        main,
        ["run", "--task", str(TINY_TASK), "--distiller", "kd", "--attack", "loss,mink", "--out", str(out)],
        env={"KDBENCH_CACHE_DIR": str(cache_dir), "KDBENCH_TEACHER_OUTPUTS": "auto"},  # the measured choice
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> AttackWorld:
    """The attack tests' memorising target and its samples (tests/attack_helpers.py), built once."""
    from tests.attack_helpers import attack_world

    return attack_world(tmp_path_factory.getbasetemp() / "attack-world")
