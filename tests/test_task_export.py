"""A task's roles as a ``datasets.DatasetDict`` (kdbench.tasks.dataset_dict) and ``kdbench tasks export``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import kdbench.tasks.export as export_module
from kdbench.cli import main
from kdbench.core.data import Example, content_hash
from kdbench.tasks import dataset_dict
from kdbench.tasks.manifest import available_tasks
from kdbench.tasks.sources import DATA_DIR_ENV

FIXTURES = Path(__file__).parent / "fixtures"
DATA = FIXTURES / "data"
DOLLY_MICRO = FIXTURES / "tasks" / "dolly-micro.yaml"
FROZEN = json.loads((FIXTURES / "tasks" / "splits" / "dolly-micro.json").read_text("utf-8"))
COLUMNS = ["id", "instruction", "context", "response", "category"]


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def kdbench(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def fixture_rows() -> list[dict[str, Any]]:
    """The fixture Dolly file by a plain parse: row k is the example with id dolly-<k>."""
    text = (DATA / "databricks-dolly-15k.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def as_examples(rows: list[dict[str, Any]]) -> list[Example]:
    return [Example(**{column: row[column] for column in COLUMNS}) for row in rows]


# --- the DatasetDict -------------------------------------------------------------------------------------------------
def test_dataset_dict_has_the_frozen_roles_with_the_file_content() -> None:
    """Each role's ids and content hash are the committed split manifest's; each row is its file row; the roles
    follow the [Z] cut of a 125-row file (40 non-member rows, 10 of them eval; private rows 40-81, public 82-124)."""
    roles = dataset_dict(str(DOLLY_MICRO), data_dir=DATA)
    assert list(roles) == ["private", "public", "holdout", "eval"]
    rows = fixture_rows()
    for role, frozen in FROZEN["roles"].items():
        dataset = roles[role]
        assert dataset.column_names == COLUMNS and dataset.num_rows == frozen["n"]
        assert dataset["id"] == frozen["ids"]
        assert content_hash(as_examples(dataset.to_list())) == frozen["sha256"]
        for record in dataset:
            row = rows[int(record["id"].removeprefix("dolly-"))]
            assert {k: record[k] for k in ("instruction", "context", "response", "category")} == row
    file_rows = {role: {int(i.removeprefix("dolly-")) for i in roles[role]["id"]} for role in roles}
    assert file_rows["private"] <= set(range(40, 82)) and file_rows["public"] <= set(range(82, 125))
    assert file_rows["holdout"] | file_rows["eval"] <= set(range(40)) and len(file_rows["eval"]) == 10
    contents = [{(r["instruction"], r["context"], r["response"]) for r in roles[role]} for role in roles]
    assert sum(map(len, contents)) == len(set().union(*contents))  # disjoint by content


def test_dataset_dict_of_a_generated_task_matches_its_split_manifest() -> None:
    frozen = json.loads((available_tasks()["synthetic-pii"].resolve().parent / "splits" / "synthetic-pii.json")
                        .read_text("utf-8"))
    roles = dataset_dict("synthetic-pii")
    assert {role: content_hash(as_examples(roles[role].to_list())) for role in roles} == {
        role: info["sha256"] for role, info in frozen["roles"].items()}


# --- kdbench tasks export --------------------------------------------------------------------------------------------
def read_back(out: Path, fmt: str, role: str) -> list[dict[str, Any]]:
    """An exported role read with the plainest reader of its format."""
    if fmt == "jsonl":
        return [json.loads(line) for line in (out / f"{role}.jsonl").read_text("utf-8").splitlines()]
    if fmt == "csv":
        with (out / f"{role}.csv").open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(out / f"{role}.parquet").to_pylist())
    import datasets

    return list(datasets.load_from_disk(str(out))[role].to_list())


@pytest.mark.parametrize("fmt", ["arrow", "jsonl", "parquet", "csv"])
def test_export_round_trips_every_role(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "export"
    result = kdbench("tasks", "export", str(DOLLY_MICRO), "--out", str(out), "--data-dir", str(DATA), "--format", fmt)
    assert result.exit_code == 0, result.output
    metadata = json.loads((out / "kdbench-export.json").read_text("utf-8"))
    rows = fixture_rows()
    for role, frozen in FROZEN["roles"].items():
        exported = read_back(out, fmt, role)
        assert [r["id"] for r in exported] == frozen["ids"]
        assert content_hash(as_examples(exported)) == frozen["sha256"]
        assert all({k: r[k] for k in ("instruction", "context", "response", "category")}
                   == rows[int(r["id"].removeprefix("dolly-"))] for r in exported)
        assert metadata["roles"][role]["n"] == frozen["n"] and metadata["roles"][role]["sha256"] == frozen["sha256"]
    assert metadata["task"] == "dolly-micro" and metadata["version"] == FROZEN["version"]
    assert metadata["split_manifest"]["verified"] is True and metadata["format"] == fmt
    assert metadata["license"] is None and metadata["attribution"] is None  # its own file: no Dolly origin claimed
    assert "dolly-micro" in (out / "README.md").read_text("utf-8")


def test_export_carries_the_license_and_attribution(tmp_path: Path) -> None:
    manifest = tmp_path / "licensed.yaml"
    manifest.write_text(f"include: {DOLLY_MICRO}\nname: licensed\nsource:\n  origin: {{repo: example.org/data, "
                        "revision: abc123, license: 'CC BY-SA 3.0 (test data, © Someone)'}\n", encoding="utf-8")
    out = tmp_path / "export"
    result = kdbench("tasks", "export", str(manifest), "--out", str(out), "--data-dir", str(DATA), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    line = "Data: CC BY-SA 3.0 (test data, © Someone), from example.org/data."
    metadata = json.loads((out / "kdbench-export.json").read_text("utf-8"))
    assert metadata["attribution"] == line and metadata["license"] == "CC BY-SA 3.0 (test data, © Someone)"
    assert metadata["split_manifest"] is None  # a new task: unfrozen, and said so
    assert line in (out / "README.md").read_text("utf-8") and line in result.output


def test_export_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    args = ["tasks", "export", str(DOLLY_MICRO), "--out", str(out), "--data-dir", str(DATA), "--format", "jsonl"]
    assert kdbench(*args).exit_code == 0  # an empty directory is fine
    (out / "mine.txt").write_text("keep", encoding="utf-8")
    refused = kdbench(*args)
    assert refused.exit_code != 0 and f"{out} is not empty" in refused.output and "--force" in refused.output
    assert (out / "mine.txt").read_text("utf-8") == "keep" and (out / "eval.jsonl").exists()
    forced = kdbench(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "mine.txt").exists() and (out / "eval.jsonl").exists()


def test_an_interrupted_export_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_readme", fail)  # the last file written
    out = tmp_path / "export"
    args = ["tasks", "export", str(DOLLY_MICRO), "--out", str(out), "--data-dir", str(DATA), "--format", "jsonl"]
    assert kdbench(*args).exit_code != 0
    assert list(tmp_path.iterdir()) == []  # neither the directory nor a temporary one
    monkeypatch.undo()
    assert kdbench(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export_module, "_readme", fail)
    assert kdbench(*args, "--force", "--format", "csv").exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and [p.name for p in tmp_path.iterdir()] == [
        "export"]


def test_export_of_an_unknown_task_suggests_the_close_name(tmp_path: Path) -> None:
    result = kdbench("tasks", "export", "dolyl", "--out", str(tmp_path / "x"))
    assert result.exit_code != 0 and "Unknown task 'dolyl'. Did you mean 'dolly'?" in result.output
    assert not (tmp_path / "x").exists()


def test_export_without_the_data_says_which_file_to_put_where(tmp_path: Path) -> None:
    result = kdbench("tasks", "export", "dolly", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path))
    assert result.exit_code != 0
    assert f"{tmp_path}/databricks-dolly-15k.jsonl" in " ".join(result.output.split()) and "--data-dir" in result.output
    assert not (tmp_path / "x").exists()


def test_export_of_the_real_dolly_carries_its_cc_by_sa_attribution(real_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "dolly"
    result = kdbench("tasks", "export", "dolly", "--out", str(out), "--data-dir", str(real_data), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    frozen = json.loads((available_tasks()["dolly"].resolve().parent / "splits" / "dolly.json").read_text("utf-8"))
    metadata = json.loads((out / "kdbench-export.json").read_text("utf-8"))
    assert {role: (info["n"], info["sha256"]) for role, info in metadata["roles"].items()} == {
        role: (info["n"], info["sha256"]) for role, info in frozen["roles"].items()}
    assert metadata["source"]["sha256"] == frozen["source"]["sha256"]
    assert "CC BY-SA 3.0" in metadata["attribution"] and "Databricks" in metadata["attribution"]
    assert metadata["attribution"] in (out / "README.md").read_text("utf-8")
    private = read_back(out, "jsonl", "private")
    assert [r["id"] for r in private] == frozen["roles"]["private"]["ids"]


# --- import cost -----------------------------------------------------------------------------------------------------
def test_commands_that_read_no_file_do_not_import_datasets() -> None:
    """`datasets` takes most of a second to import: `tasks list` and a generated task's `show` never pay it."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom kdbench.cli import main\n"
            "for args in (['tasks', 'list'], ['tasks', 'show', 'synthetic-pii']):\n"
            "    assert CliRunner().invoke(main, args).exit_code == 0\n"
            "print(sorted(m for m in ('datasets', 'pandas', 'pyarrow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
