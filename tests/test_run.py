"""One honest end-to-end run on a tiny task: the files of record, their fields, and the cache."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from kdbench.cli import main
from kdbench.results.records import load_records

DESIGN_FIELDS = {
    "task", "distiller", "defense", "attack", "target", "auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr",
    "n_members", "n_nonmembers", "rouge_l", "seed",
}
RUN_FIELDS = {"kdbench_version", "git_commit", "packages", "seeds", "config_hash", "groups", "wall_time_per_stage",
              "device", "python"}


def test_results_have_the_fields_of_record(small_run_dir: Path) -> None:
    records = load_records([small_run_dir])  # validates every record
    assert {(r["target"], r["attack"]) for r in records} == {
        (t, a) for t in ("teacher", "baseline", "student") for a in ("loss", "mink", "blind")  # blind by default
    }
    blind = [r for r in records if r["attack"] == "blind"]
    assert all(r["reference"] for r in blind) and not any(r["reference"] for r in records if r not in blind)
    assert len({r["auc"] for r in blind}) == 1  # no model: the same samples give the same AUC for every target
    for record in records:
        assert set(record) >= DESIGN_FIELDS
        assert record["auc_ci"][0] <= record["auc"] <= record["auc_ci"][1]
        assert record["n_members"] == record["n_nonmembers"] == 30
        assert set(record["memorization"]) >= {"members", "nonmembers", "gap"}
    student = next(r for r in records if r["target"] == "student")
    assert (student["distiller"], student["defense"]) == ("kd", "none")
    assert student["distiller_params"]["kd_ratio"] == 1.0
    teacher = next(r for r in records if r["target"] == "teacher")
    assert teacher["distiller"] is None and teacher["defense"] is None


def test_students_and_baseline_record_their_reverse_kl_to_the_teacher(small_run_dir: Path) -> None:
    records = load_records([small_run_dir])
    by_target = {r["target"]: r["teacher_rkl"] for r in records}
    assert by_target["teacher"] is None
    student, baseline = by_target["student"], by_target["baseline"]
    assert student["before"] == baseline["before"] > 0  # one initialisation (student base, the run's seed)
    assert student["after"] < student["before"]  # kd moved the student toward the teacher


def test_run_json_has_provenance(small_run_dir: Path) -> None:
    info = json.loads((small_run_dir / "run.json").read_text())
    assert set(info) | set(info["groups"][0]) >= RUN_FIELDS
    group = info["groups"][0]
    assert set(group["split_hashes"]) == {"private", "public", "holdout", "eval"}
    assert all(len(h) == 64 for h in group["split_hashes"].values())
    assert info["packages"]["torch"] and info["failures"] == []
    assert {"teacher", "baseline"} <= set(info["wall_time_per_stage"])
    (cell, choice), = info["teacher_outputs"].items()  # the kd cell: where its teacher came from, and why
    assert "kd" in cell and choice["source"] in ("live", "cached")
    forward_wins = choice["teacher_forward_s"] <= choice["cached_read_s"]
    assert choice["source"] == ("live" if forward_wins else "cached") and "s/batch" in choice["reason"]


def test_a_pinned_teacher_source_never_reuses_a_student_trained_from_the_other(
    small_run_dir: Path, cache_dir: Path, tiny_task: Path, tmp_path: Path
) -> None:
    """The auto run's student was trained from whichever source its timing chose; asking for live (or cached) must
    train its own student, not return that one (the source asked for is in the student's cache key)."""
    students = lambda: {p.name for p in (cache_dir / "model").iterdir()}  # noqa: E731
    before = students()
    for attempt in ("first", "second"):  # the second run reuses the first's student
        out = tmp_path / attempt
        result = CliRunner().invoke(
            main, ["run", "--task", str(tiny_task), "--distiller", "kd", "--attack", "loss", "--out", str(out)],
            env={"KDBENCH_CACHE_DIR": str(cache_dir), "KDBENCH_TEACHER_OUTPUTS": "live"}, catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        (choice,) = json.loads((out / "run.json").read_text())["teacher_outputs"].values()
        assert choice["source"] == "live" and choice["reason"] == "set to live"
    assert len(students() - before) == 1


def test_per_sample_scores_are_saved(small_run_dir: Path) -> None:
    files = sorted((small_run_dir / "scores").glob("*.jsonl"))
    assert len(files) == 3
    rows = [json.loads(line) for line in files[0].read_text().splitlines()[1:]]
    assert sum(r["member"] for r in rows) == 30 and len(rows) == 60
    assert all(isinstance(r["loss"], float) for r in rows)


def test_second_identical_run_trains_nothing_and_agrees(small_run_dir: Path, tiny_task: Path, tmp_path: Path,
                                                         cache_dir: Path) -> None:
    out = tmp_path / "again"
    result = CliRunner().invoke(
        main, ["run", "--task", str(tiny_task), "--distiller", "kd", "--attack", "loss,mink", "--out", str(out)],
        env={"KDBENCH_CACHE_DIR": str(cache_dir), "KDBENCH_TEACHER_OUTPUTS": "auto"},  # as small_run_dir
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["cache"]["builds"] == []
    assert any(hit.startswith("model/") for hit in info["cache"]["hits"])
    first = {(r["target"], r["attack"]): r["auc"] for r in load_records([small_run_dir])}
    second = {(r["target"], r["attack"]): r["auc"] for r in load_records([out])}
    assert first == second
    assert "0 artifacts built" in result.output
    table = result.output[result.output.index("kdbench results"):result.output.index("Wrote")]
    assert "(reference)" in table and "blind" in table
    assert max(len(line) for line in table.splitlines()) <= 80  # CliRunner's terminal: 80 columns, not a tty


def test_micro_batch_is_used_and_recorded(small_run_dir: Path, tiny_task: Path, tmp_path: Path,
                                          cache_dir: Path) -> None:
    """`--micro-batch` trains the new student two rows at a time (the cached teacher is reused) and run.json
    records it; memory.py's tests show the cut leaves the update unchanged."""
    out = tmp_path / "micro"
    result = CliRunner().invoke(
        main, ["run", "--task", str(tiny_task), "--distiller", "kd:epochs=1", "--attack", "loss", "--out", str(out),
               "--micro-batch", "2"],
        env={"KDBENCH_CACHE_DIR": str(cache_dir)},
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["command"]["micro_batch"] == 2
    assert any(key.startswith("model/") for key in info["cache"]["builds"])  # a student was trained
    assert {r["target"] for r in load_records([out])} == {"teacher", "baseline", "student"}


def test_results_show_gives_cs_member_specific_risk_per_attack(small_run_dir: Path) -> None:
    """The loss attack's members-flagged rate, recomputed by brute force from the saved per-sample scores: every
    threshold, [C]'s rule (each predicted class ≥ 20% of samples), the highest of the best balanced accuracies."""
    result = CliRunner().invoke(main, ["results", "show", str(small_run_dir), "--value", "member_tpr"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "members flagged (TPR) at [C]'s threshold per attack" in " ".join(result.output.split())  # title wraps
    teacher_file = next(f for f in (small_run_dir / "scores").glob("*.jsonl") if "teacher" in f.name)
    rows = [json.loads(line) for line in teacher_file.read_text().splitlines()[1:]]
    members = [r["loss"] for r in rows if r["member"]]
    nonmembers = [r["loss"] for r in rows if not r["member"]]
    best: tuple[float, float] | None = None
    for t in sorted(set(members + nonmembers), reverse=True):
        tp, fp = sum(x >= t for x in members), sum(x >= t for x in nonmembers)
        flagged = (tp + fp) / (len(members) + len(nonmembers))
        if 0.2 <= flagged <= 0.8:
            ba = (tp / len(members) + 1 - fp / len(nonmembers)) / 2
            if best is None or ba > best[0] + 1e-12:
                best = (ba, tp / len(members))
    assert best is not None
    loss_row = next(line for line in result.output.splitlines() if line.strip().startswith("loss "))
    assert loss_row.split()[1] == f"{best[1]:.3f}"  # the teacher is the first column
