"""TPR at low FPR is only as fine as the non-members allow (1/n): which FPRs are resolved, how tables and pages
mark the others, and the task setting for more non-members than members."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.core.errors import KdbenchError, TaskError
from kdbench.evaluation.metrics import resolution_note, resolves
from kdbench.run.cells import attack_samples
from kdbench.tasks.manifest import load_task
from kdbench.tasks.splits import make_splits
from tests.helpers import make_record


@pytest.mark.parametrize(("fpr", "n", "expected"), [
    (0.001, 1000, True), (0.001, 999, False), (0.001, 200, False), (0.01, 200, True), (0.01, 100, True),
    (0.01, 99, False),
])
def test_an_fpr_is_resolved_from_one_over_its_value_non_members_on(fpr: float, n: int, expected: bool) -> None:
    assert resolves(fpr, n) is expected


def test_the_note_says_what_the_default_task_resolves() -> None:
    note = resolution_note(200, "the task's evaluation.n_nonmembers")
    assert "1/200 = 0.5%: TPR at 0.1% FPR is the TPR at zero false positives (marked *)" in note  # not 1%
    assert resolution_note(1000, "x") == "1000 non-members resolve FPR in steps of 1/1000 = 0.1%."


def _task(tmp_path: Path, tiny_task: Path, evaluation: str) -> Path:
    path = tmp_path / "more-nonmembers.yaml"
    path.write_text(f"include: {tiny_task}\nevaluation: {{{evaluation}}}\n", encoding="utf-8")  # same name: same draw
    return path


def test_n_nonmembers_draws_more_non_members_and_keeps_the_members(tmp_path: Path, tiny_task: Path) -> None:
    default = load_task(str(tiny_task))
    members, nonmembers = attack_samples(default, make_splits(default))
    assert len(members) == len(nonmembers) == 30
    task = load_task(str(_task(tmp_path, tiny_task, "n_nonmembers: 40")))
    more_members, more = attack_samples(task, make_splits(task))
    assert [e.id for e in more_members] == [e.id for e in members]  # same draw: only the non-members grow
    assert len(more) == 40 and len({e.id for e in more}) == 40
    assert {e.id for e in more} == {e.id for e in make_splits(task).roles["holdout"]}  # all 40 of holdout


def test_n_nonmembers_beyond_the_holdout_split_is_refused(tmp_path: Path, tiny_task: Path) -> None:
    task = load_task(str(_task(tmp_path, tiny_task, "n_nonmembers: 41")))
    with pytest.raises(KdbenchError, match=r"evaluation\.n_nonmembers is 41, but the holdout split has 40"):
        attack_samples(task, make_splits(task))
    with pytest.raises(TaskError, match="n_nonmembers"):
        load_task(str(_task(tmp_path, tiny_task, "n_nonmembers: 1")))


def test_the_leaderboard_marks_tprs_the_non_members_cannot_resolve(tmp_path: Path) -> None:
    records = [make_record(None, None, target=t, n_nonmembers=200, tpr_at_1pct_fpr=0.123, tpr_at_01pct_fpr=0.045)
               for t in ("teacher", "baseline")] + [
        make_record(n_nonmembers=200, tpr_at_1pct_fpr=0.123, tpr_at_01pct_fpr=0.045)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    result = CliRunner().invoke(main, ["leaderboard", "build", str(results), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    (entry,) = [p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html") if "0.045" in p.read_text()]
    assert re.search(r">0\.045\*</td>", entry) and re.search(r">0\.123</td>", entry)


def test_the_run_table_marks_and_explains_the_resolution(small_run_dir: Path, tiny_task: Path, tmp_path: Path,
                                                         cache_dir: Path) -> None:
    """The tiny run's 30 non-members resolve neither 0.1% nor 1% (steps of 3.3%): every TPR@1% is marked."""
    result = CliRunner().invoke(
        main, ["run", "--task", str(tiny_task), "--distiller", "kd", "--attack", "loss", "--out", str(tmp_path / "o")],
        env={"KDBENCH_CACHE_DIR": str(cache_dir), "COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "30 non-members resolve FPR in steps of 1/30 = 3.33%: TPR at 0.1% and 1% FPR is the TPR at zero" in text
    assert len(re.findall(r"\d\.\d{3}\*", result.output)) == 3  # teacher, baseline, student
