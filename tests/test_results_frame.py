"""kdbench.results.load and the summaries built on it: flattened columns, replicate aggregation, comparisons,
exports and the errors for bad input, against values written out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import kdbench
from kdbench.core.errors import KdbenchError
from kdbench.results import export, summary
from kdbench.results.records import ResultsFileError
from tests.helpers import make_record


def write_run(directory: Path, records: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def two_seed_grid() -> list[dict[str, Any]]:
    """Teacher and a kd student over two seeds, attacks loss and mink, and a blind reference."""
    out = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        out += [
            make_record(None, None, target="teacher", attack="loss", auc=0.8 + shift, seed=seed, rouge=30.0),
            make_record(None, None, target="teacher", attack="mink", auc=0.7, seed=seed, rouge=30.0),
            make_record("kd", "none", attack="loss", auc=0.6 + shift, seed=seed, rouge=20.0 + 10 * shift),
            make_record("kd", "none", attack="mink", auc=0.62, seed=seed, rouge=20.0 + 10 * shift),
            make_record("kd", "none", attack="blind", auc=0.9, seed=seed, rouge=20.0 + 10 * shift, reference=True),
        ]
    return out


def test_load_flattens_nested_fields_with_dotted_names(tmp_path: Path) -> None:
    record = make_record("kd", "none", distiller_params={"temperature": 2.0, "objective": "fkl"},
                         attack_params={"k": 0.2}, attack="mink", auc=0.61)
    df = kdbench.results.load(write_run(tmp_path / "run", [record]))
    row = df.iloc[0]
    assert len(df) == 1
    assert row["distiller_params.temperature"] == 2.0 and row["distiller_params.objective"] == "fkl"
    assert row["attack_params.k"] == 0.2
    assert row["memorization.members"] == 0.1 and row["memorization.gap"] == 0.08
    assert row["provenance.split_hashes.private"] == "abc"
    assert (row["auc_lo"], row["auc_hi"]) == pytest.approx((0.56, 0.66))
    assert (row["rouge_l_lo"], row["rouge_l_hi"]) == (19.0, 21.0)
    assert row["cell"] == "kd" and row["attack_label"] == "mink" and not row["reference"]
    assert list(df.columns[:3]) == ["task", "protocol", "target"]


def test_labels_name_only_the_parameters_that_differ(tmp_path: Path) -> None:
    records = [
        make_record("kd", "none", distiller_params={"temperature": t, "objective": "fkl"}, attack="loss")
        for t in (2.0, 4.0)
    ] + [make_record("kd", "dp-sgd", defense_params={"dp-sgd": {"epsilon": 8}}, distiller_params={"temperature": 2.0,
                                                                                                 "objective": "fkl"})]
    df = kdbench.results.load(write_run(tmp_path / "run", records))
    assert df["cell"].tolist() == ["kd:temperature=2.0", "kd:temperature=4.0", "kd:temperature=2.0 [dp-sgd]"]
    assert df["attack_label"].tolist() == ["loss"] * 3


def test_load_reads_files_directories_and_globs_together(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "a", [make_record(seed=0)])
    write_run(tmp_path / "runs" / "b", [make_record(seed=1), make_record(seed=2)])
    single = write_run(tmp_path / "other", [make_record(seed=3)]) / "results.jsonl"
    df = kdbench.results.load(str(tmp_path / "runs" / "*"), single)
    assert sorted(df["seed"]) == [0, 1, 2, 3]


@pytest.mark.parametrize(("content", "expected"), [
    (json.dumps(make_record()) + "\n{not json\n", r"results\.jsonl:2: not valid JSON"),
    (json.dumps({"_meta": {"target": "teacher"}}) + "\n", r"results\.jsonl:1: not a results record \(keys: _meta\)"),
    (json.dumps({"run_id": "x"}) + "\n", r"results\.jsonl:1: invalid results record: missing field 'task'"),
])
def test_bad_lines_are_refused_with_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises(ResultsFileError, match=expected):
        kdbench.results.load(tmp_path)


def test_a_json_document_is_not_a_results_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_id": "x", "seeds": [0]}, indent=2))
    with pytest.raises(ResultsFileError, match=r"run\.json: one JSON document, not a results file"):
        kdbench.results.load(path)


def test_an_empty_glob_names_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match=r"nothing-\*: the pattern matches no file"):
        kdbench.results.load(str(tmp_path / "nothing-*"))


def test_replicates_aggregate_to_mean_spread_and_mean_ci() -> None:
    agg = summary.aggregate(kdbench.results.frame(two_seed_grid()))
    loss = agg[(agg["cell"] == "kd") & (agg["attack_label"] == "loss")].iloc[0]
    # seeds: AUC 0.6 [0.55, 0.65] and 0.7 [0.65, 0.75]
    assert loss["n"] == 2
    assert loss["auc"] == pytest.approx(0.65)
    assert loss["auc_sd"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert (loss["auc_lo"], loss["auc_hi"]) == pytest.approx((0.6, 0.7))
    assert (loss["auc_min"], loss["auc_max"]) == pytest.approx((0.6, 0.7))
    assert loss["rouge_l"] == pytest.approx(20.5)
    assert agg["cell"].iloc[0] == "teacher"  # teacher, then baseline, then students


def test_strongest_attack_per_target_never_picks_a_reference() -> None:
    table = summary.by_target(summary.aggregate(kdbench.results.frame(two_seed_grid())))
    assert table[["cell", "strongest"]].values.tolist() == [["teacher", "loss"], ["kd", "loss"]]
    assert table["auc"].tolist() == pytest.approx([0.85, 0.65])  # not blind's 0.9


def test_per_attack_view_has_attacks_as_rows_references_last() -> None:
    view = summary.per_attack(summary.aggregate(kdbench.results.frame(two_seed_grid())))
    assert view.index.tolist() == ["loss", "mink", "blind"]
    assert view.columns.tolist() == ["teacher", "kd"]
    assert view.loc["loss", "teacher"] == pytest.approx(0.85)
    assert math.isnan(view.loc["blind", "teacher"])


def test_compare_reports_b_minus_a_with_the_independent_ci() -> None:
    df = kdbench.results.frame(two_seed_grid())
    a, b = df[df["seed"] == 0], df[df["seed"] == 1]
    pair = summary.compare(a, b, on=["task", "cell", "attack_label"])
    loss = pair[(pair["cell"] == "kd") & (pair["attack_label"] == "loss")].iloc[0]
    half = math.hypot(0.05, 0.05)
    assert loss["delta_auc"] == pytest.approx(0.1)
    assert (loss["delta_auc_lo"], loss["delta_auc_hi"]) == pytest.approx((0.1 - half, 0.1 + half))
    assert loss["delta_rouge_l"] == pytest.approx(1.0)


def test_confounded_warns_only_when_the_reference_ci_lies_above_chance() -> None:
    # seed 2: an out-of-fold AUC below chance (CI [0.40, 0.48]) is cross-validation's no-signal bias, not a shift
    records = [make_record(attack="blind", auc=0.7, reference=True, seed=0),
               make_record(attack="blind", auc=0.52, reference=True, seed=1),
               make_record(attack="blind", auc=0.44, auc_ci=[0.40, 0.48], reference=True, seed=2)]
    warnings = summary.confounded(kdbench.results.frame(records))
    assert len(warnings) == 1 and "seed 0" in warnings[0] and "0.700 [0.650, 0.750]" in warnings[0]


def test_paper_table_and_its_markdown() -> None:
    table = summary.paper_table(kdbench.results.frame(two_seed_grid()))
    assert table.columns.tolist()[:5] == ["task", "cell", "AUC loss", "AUC mink", "AUC blind (reference)"]
    text = export.render(table[table["cell"] == "teacher"], "markdown")
    assert text.splitlines() == [
        "| task | cell | AUC loss | AUC mink | AUC blind (reference) | ROUGE-L | memorized members"
        " | memorized non-members | seeds |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|",
        f"| synthetic-pii | teacher | 0.850 ± {math.sqrt(2 * 0.05**2):.3f} | 0.700 ± 0.000 | – | 30.0 | 0.10 | 0.02"
        " | 2 |",
    ]


def test_export_formats_round_trip(tmp_path: Path) -> None:
    table = summary.paper_table(kdbench.results.frame(two_seed_grid()))
    back = pd.read_csv(export.write(table, "csv", tmp_path / "t.csv"))
    assert back["AUC loss"].tolist() == pytest.approx(table["AUC loss"].tolist())
    assert json.loads(export.render(table, "json"))[0]["cell"] == "teacher"
    assert pd.read_parquet(export.write(table, "parquet", tmp_path / "t.parquet")).shape == table.shape
    latex = export.render(table, "latex")
    assert "\\begin{tabular}" in latex and "0.850 $\\pm$ 0.071" in latex and "±" not in latex
    with pytest.raises(KdbenchError, match="Unknown export format 'xlsx'"):
        export.render(table, "xlsx")


def test_per_attack_view_of_a_thresholded_metric_averages_replicates() -> None:
    records = [make_record("kd", "none", attack="loss", seed=seed, member_tpr=tpr, member_precision=0.5 + seed / 10)
               for seed, tpr in ((0, 0.3), (1, 0.5))]
    records.append(make_record("kd", "none", attack="mink", seed=0))  # written before the field existed: absent
    agg = summary.aggregate(kdbench.results.frame(records))
    view = summary.per_attack(agg, "member_tpr")
    assert view.loc["loss", "kd"] == pytest.approx(0.4)
    assert math.isnan(view.loc["mink", "kd"])
    assert summary.per_attack(agg, "member_precision").loc["loss", "kd"] == pytest.approx(0.55)


def test_validation_bounds_the_member_specific_rates_to_the_unit_interval(tmp_path: Path) -> None:
    for field in ("member_tpr", "member_precision"):
        path = write_run(tmp_path / field, [{**make_record(), field: 1.5}])
        with pytest.raises(ResultsFileError, match=f"{field}.*outside"):
            kdbench.results.load(path)
