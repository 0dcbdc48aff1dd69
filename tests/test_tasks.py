"""Task manifests, sources and split protocols (docs/tasks.md), on shipped tasks and small local fixtures."""

from __future__ import annotations

import json
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdbench.core.data import Example, content_key
from kdbench.core.errors import TaskError
from kdbench.tasks import sources
from kdbench.tasks.manifest import ROLES, Task, available_tasks, load_task
from kdbench.tasks.sources import MissingDataError, PinMismatchError
from kdbench.tasks.splits import Splits, dedupe, freeze_splits, make_splits, split_manifest_path, verify_splits

FIXTURES = Path(__file__).parent / "fixtures"
DATA = FIXTURES / "data"
DOLLY_MICRO = FIXTURES / "tasks" / "dolly-micro.yaml"
SHIPPED = sorted(available_tasks())
GENERATED = [name for name in SHIPPED if load_task(name).source_kind == "generator"]
REAL = [name for name in SHIPPED if name not in GENERATED]  # tasks on real data (../shared/data)
UNAVAILABLE = {"un-ni"}  # no usable public copy of its data: unfrozen
# synthetic-pii as it was before split manifests existed: its content and splits must never change silently.
SYNTHETIC_PII_HASHES = {  # generator version 2 (responses open with an aside), private 200
    "private": "23753b841a8fe69256cc69bc8bf5bf264cc9a25b9c063b2709148654cc9c899b",
    "public": "eb8280201b4efa8c0758566ccd98e262b48fd5456093bfca0dc9c86d0d8630e9",
    "holdout": "50b3534a4b09d9109cbd86610b9b7f860f1c2a72cb496c33a3043ca66e996a48",
    "eval": "280f84b88817b2f0d76e7de2356768ca84cfea27c3888af20907be7d88f6a71d",
}


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_disjoint_and_filled(task: Task, splits: Splits) -> None:
    assert set(splits.roles) == set(task.roles)
    owners: dict[str, str] = {}
    for role, examples in splits.roles.items():
        assert examples, f"{task.name}: role {role} is empty"
        for example in examples:
            assert owners.setdefault(content_key(example), role) == role, f"{task.name}: {example.id} in two roles"


# --- shipped tasks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_task_validates_and_is_named_after_its_file(name: str) -> None:
    task = load_task(name)
    assert task.name == name == task.path.stem
    assert task.version >= 1 and task.description


def test_the_shipped_task_list_is_complete() -> None:
    categories = ["open_qa", "general_qa", "classification", "closed_qa", "brainstorming", "information_extraction",
                  "summarization", "creative_writing"]
    expected = {"synthetic-pii", "synthetic-pii-private", "dolly", "dolly-study-tiny", "self-inst", "vicuna", "s-ni",
                "un-ni"}
    expected |= {f"dolly-{c}" for c in categories} | {f"synthetic-pii-{c}" for c in categories if c != "general_qa"}
    assert set(SHIPPED) == expected


@pytest.mark.parametrize("name", GENERATED)
def test_generated_tasks_match_their_shipped_split_manifests(name: str) -> None:
    task = load_task(name)
    splits = make_splits(task)
    assert_disjoint_and_filled(task, splits)
    assert split_manifest_path(task).is_file()
    assert verify_splits(task, splits) is True


def test_synthetic_pii_content_and_splits_are_unchanged() -> None:
    task = load_task("synthetic-pii")
    assert make_splits(task).hashes() == SYNTHETIC_PII_HASHES
    frozen = json.loads(split_manifest_path(task).read_text("utf-8"))
    assert {role: info["sha256"] for role, info in frozen["roles"].items()} == SYNTHETIC_PII_HASHES


def test_per_category_synthetic_tasks_hold_one_category_of_the_same_people() -> None:
    task = load_task("synthetic-pii-closed_qa")
    assert task.source["params"] == {"n_people": 120, "n_records": 1000, "categories": ["closed_qa"]}
    assert task.seed == load_task("synthetic-pii").seed
    assert {e.category for examples in make_splits(task).roles.values() for e in examples} == {"closed_qa"}


@pytest.mark.parametrize("name", REAL)
def test_real_tasks_verify_against_their_split_manifests_on_the_real_data(name: str, real_data: Path) -> None:
    task = load_task(name)
    if name in UNAVAILABLE:
        assert not split_manifest_path(task).exists()
        with pytest.raises(MissingDataError, match="not available here"):
            make_splits(task, data_dir=real_data)
        return
    splits = make_splits(task, data_dir=real_data)
    assert_disjoint_and_filled(task, splits)
    assert verify_splits(task, splits) is True
    frozen = json.loads(split_manifest_path(task).read_text("utf-8"))
    assert frozen["source"]["sha256"] == task.source["sha256"] == sources.file_sha256(Path(splits.location))
    assert frozen["source"]["rows"] == task.source["rows"]


def test_dolly_category_tasks_are_exactly_dollys_roles_of_that_category(real_data: Path) -> None:
    dolly = make_splits(load_task("dolly"), data_dir=real_data)
    sliced = make_splits(load_task("dolly-closed_qa"), data_dir=real_data)
    for role in ROLES:
        assert [e.id for e in sliced.roles[role]] == [e.id for e in dolly.roles[role] if e.category == "closed_qa"]


def test_eval_only_sets_have_only_an_eval_role_and_use_the_first_reference(real_data: Path) -> None:
    task = load_task("s-ni")
    assert task.eval_only and task.roles == ("eval",)
    splits = make_splits(task, data_dir=real_data)
    first = json.loads((real_data / "MiniLLM/sinst/11_/valid.jsonl").read_text("utf-8").split("\n")[0])
    example = splits.roles["eval"][0]
    assert (example.instruction, example.context, example.response) == (
        first["instruction"], first["input"], first["output"][0])
    assert example.id == "s-ni-00000" and example.category == "s-ni"


def test_s_ni_is_not_described_as_a_word_bucket(real_data: Path) -> None:
    """MiniLLM's `11_` bucket counts tokens: many first references are shorter than 11 words."""
    rows = [json.loads(line) for line in (real_data / "MiniLLM/sinst/11_/valid.jsonl").read_text("utf-8").split("\n")
            if line.strip()]
    assert sum(len(row["output"][0].split()) < 11 for row in rows) == 511
    assert "words" not in load_task("s-ni").description.replace("not words", "")


# --- the [Z] protocol and de-duplication --------------------------------------------------------------------------
def test_dolly_z_protocol_on_the_fixture() -> None:
    task = load_task(str(DOLLY_MICRO))
    splits = make_splits(task, data_dir=DATA)
    rows = {role: [int(e.id.removeprefix("dolly-")) for e in ex] for role, ex in splits.roles.items()}
    assert splits.duplicates_dropped == 3
    assert all(row < 40 for row in rows["holdout"] + rows["eval"])
    assert len(rows["eval"]) == 10 and rows["eval"] == sorted(rows["eval"])
    # 125 rows: rows 40..124 are halved by file position, 85 // 2 = 42 rows private (40..81), the rest public
    assert set(rows["private"]) <= set(range(40, 82)) and set(rows["public"]) <= set(range(82, 125))
    assert make_splits(task, data_dir=DATA).hashes() == splits.hashes()  # deterministic


def test_the_z_cut_is_by_file_position_on_the_real_dolly_file(real_data: Path) -> None:
    """[Z]'s code: lines [:4000] held out, int(n / 2) of the remaining lines private, no duplicate dropped first.
    Expected ids come from the raw file read here, not from the splitter."""
    lines = (real_data / "databricks-dolly-15k.jsonl").read_text("utf-8").split("\n")
    assert len(lines) == 15015
    seen: set[str] = set()
    repeat = []
    for line in lines:
        row = json.loads(line)
        key = content_key(Example("", row["instruction"], row["context"], row["response"], ""))
        repeat.append(key in seen)
        seen.add(key)
    boundary = 4000 + (15015 - 4000) // 2  # 9507
    expected = {
        "private": [f"dolly-{r:05d}" for r in range(4000, boundary) if not repeat[r]],
        "public": [f"dolly-{r:05d}" for r in range(boundary, 15015) if not repeat[r]],
    }
    splits = make_splits(load_task("dolly"), data_dir=real_data)
    for role, ids in expected.items():
        assert [e.id for e in splits.roles[role]] == ids
    assert splits.roles["private"][-1].id == "dolly-09506" and splits.roles["public"][0].id == "dolly-09507"
    assert sum(repeat) == splits.duplicates_dropped == 16
    non_members = sorted(e.id for role in ("holdout", "eval") for e in splits.roles[role])
    assert non_members == [f"dolly-{r:05d}" for r in range(4000) if not repeat[r]]


def test_dedupe_keeps_the_first_of_each_content_and_its_row() -> None:
    loaded = sources.load(load_task(str(DOLLY_MICRO)), DATA).examples
    kept, rows = dedupe(loaded)
    assert len(loaded) - len(kept) == 3
    assert len({content_key(e) for e in kept}) == len(kept)
    assert [loaded[row] for row in rows] == kept


def test_ranges_protocol_and_sizes(tmp_path: Path) -> None:
    manifest = write(tmp_path / "r.yaml", f"""
name: ranged
version: 1
seed: 3
source: {{file: {DATA / 'databricks-dolly-15k.jsonl'}}}
splits:
  protocol: ranges
  ranges: {{eval: [0, 10], holdout: [10, 40], private: [40, 80], public: [80, 125]}}
  sizes: {{holdout: 20}}
""")
    splits = make_splits(load_task(str(manifest)))
    assert len(splits.roles["holdout"]) == 20 and len(splits.roles["eval"]) <= 10
    assert all(40 <= int(e.id.split("-")[1]) < 80 for e in splits.roles["private"])


def test_categories_that_leave_a_role_empty_are_an_error(tmp_path: Path) -> None:
    text = f"include: {DOLLY_MICRO}\nname: none-left\nsplits: {{categories: [poetry]}}\n"
    manifest = write(tmp_path / "c.yaml", text)
    with pytest.raises(TaskError, match=r"c\.yaml: key 'splits\.categories'.*'private' role is empty"):
        make_splits(load_task(str(manifest)), data_dir=DATA)


# --- manifests: include and strict validation ---------------------------------------------------------------------
def test_include_merges_deeply_and_the_including_file_wins(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", """
name: base
version: 1
source: {generator: synthetic-pii, params: {n_people: 10, n_records: 60}}
splits: {sizes: {private: 10, public: 10, holdout: 10, eval: 5}}
tags: [a, b]
""")
    child = write(tmp_path / "sub" / "child.yaml", """
include: ../base.yaml
name: child
source: {params: {n_records: 80}}
tags: [c]
""")
    task = load_task(str(child))
    assert task.name == "child" and task.tags == ("c",)
    assert task.source == {"generator": "synthetic-pii", "params": {"n_people": 10, "n_records": 80}}
    assert task.includes == ((tmp_path / "base.yaml").resolve(),)


BASE = """name: bad
version: 1
source: {generator: synthetic-pii, params: {n_people: 10, n_records: 60}}
splits: {sizes: {private: 10, public: 10, holdout: 10, eval: 5}}
"""
MALFORMED: dict[str, tuple[str, str]] = {
    "unknown key": (BASE + "evaluation: {n_atack: 5}\n", "unknown key 'evaluation.n_atack'"),
    "missing source": ("name: bad\nversion: 1\nsplits: {sizes: {private: 1, public: 1, holdout: 1, eval: 1}}\n",
                       "missing required key 'source'"),
    "negative size": (BASE.replace("eval: 5", "eval: -5"), "key 'splits.sizes.eval' is -5, must be at least 0"),
    "empty role": (BASE.replace("eval: 5", "eval: 0"), "key 'splits.sizes.eval' is 0"),
    "wrong type": (BASE.replace("version: 1", "version: one"), "key 'version' must be int"),
    "bool for int": (BASE + "seed: true\n", "key 'seed' must be int"),
    "overlapping roles": (BASE.replace("splits: {sizes: {private: 10, public: 10, holdout: 10, eval: 5}}",
                                       "splits: {protocol: ranges, ranges: {private: [0, 20], public: [15, 30], "
                                       "holdout: [30, 40], eval: [40, 45]}}"),
                          "key 'splits.ranges.public' overlaps 'splits.ranges.private'"),
    "missing size": (BASE.replace("eval: 5", "").replace(", }", "}"), "missing required key 'splits.sizes.eval'"),
    "two sources": (BASE.replace("{generator:", "{file: x.jsonl, generator:"), "key 'source' must name exactly one"),
    "wrong protocol key": (BASE.replace("splits: {", "splits: {holdout_rows: 5, "),
                           "key 'splits.holdout_rows' does not apply to protocol 'shuffle'"),
    "unknown protocol": (BASE.replace("splits: {", "splits: {protocol: random, "), "key 'splits.protocol'"),
    "not a mapping": ("- just\n- a list\n", "must be a mapping"),
    "executable tag": (BASE + "seed: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifests_name_the_file_and_the_key(case: str, tmp_path: Path) -> None:
    text, message = MALFORMED[case]
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(TaskError) as info:
        load_task(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_an_include_cycle_is_an_error_on_the_include_key(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "include: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "include: a.yaml\nversion: 1\n")
    with pytest.raises(TaskError, match=r"b\.yaml: key 'include': include cycle \(a\.yaml -> b\.yaml -> a\.yaml\)"):
        load_task(str(tmp_path / "a.yaml"))


def test_errors_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    write(tmp_path / "part.yaml", "splits: {sizez: {}}\n")
    child = write(tmp_path / "child.yaml", "include: part.yaml\n" + BASE)
    with pytest.raises(TaskError, match=r"part\.yaml: unknown key 'splits\.sizez'"):
        load_task(str(child))


def test_eval_only_tasks_take_no_distill_on(tmp_path: Path) -> None:
    path = write(tmp_path / "e.yaml", "include: " + str(available_tasks()["vicuna"].resolve()) +
                 "\nname: e\ndistill_on: private\n")
    with pytest.raises(TaskError, match="key 'distill_on' does not apply to an eval-only task"):
        load_task(str(path))


def test_distill_on_private_is_kept_and_changes_no_split(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", f"include: {DOLLY_MICRO}\nname: dolly-micro-private\ndistill_on: private\n")
    task = load_task(str(path))
    assert task.distill_on == "private"
    assert make_splits(task, data_dir=DATA).hashes() == make_splits(load_task(str(DOLLY_MICRO)), data_dir=DATA).hashes()


@pytest.mark.slow  # imports torch through kdbench.run.context
def test_distill_on_private_trains_students_and_baseline_on_private(tmp_path: Path) -> None:
    import torch

    from kdbench.core.cache import ArtifactCache
    from kdbench.run.context import RunContext

    path = write(tmp_path / "p.yaml", f"include: {DOLLY_MICRO}\nname: dolly-micro-private\ndistill_on: private\n")
    task = load_task(str(path))
    splits = make_splits(task, data_dir=DATA)
    ctx = RunContext(task=task, splits=splits, cache=ArtifactCache(tmp_path / "cache"), device=torch.device("cpu"),
                     seed=0, teacher_ref="t", student_ref="s")
    assert ctx.distillation_data() == splits.roles["private"]


# --- sources ------------------------------------------------------------------------------------------------------
def file_task(tmp_path: Path, data_name: str, extra: str = "") -> Task:
    manifest = write(tmp_path / "t.yaml", f"""
name: local
version: 1
source: {{file: {data_name}}}
splits: {{protocol: eval-only}}
{extra}""")
    return load_task(str(manifest))


# Cells a reader could get wrong: leading zeros and an empty cell (CSV number/NA inference), a comma and a newline
# (CSV quoting), a Unicode line separator (JSON lines split on "\n" only), non-ASCII text.
RECORDS = [
    {"q": "Name a colour.", "ctx": "", "a": "Teal,\nwith a comma and a newline.", "key": "007"},
    {"q": "Name a fruit.", "ctx": "Orchard list", "a": "Quince\u2028(one line in JSON)", "key": "010"},
    {"q": "¿Qué?", "ctx": "NA", "a": "nan", "key": "x3"},
]


def write_records(tmp_path: Path) -> dict[str, Path]:
    """RECORDS as JSON, JSONL, CSV (the csv module) and Parquet (pyarrow alone): no ``datasets`` involved."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {kind: tmp_path / f"d.{kind}" for kind in ("json", "jsonl", "csv", "parquet")}
    write(paths["json"], json.dumps(RECORDS))
    write(paths["jsonl"], "\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    with paths["csv"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RECORDS[0]))
        writer.writeheader()
        writer.writerows(RECORDS)
    pq.write_table(pa.Table.from_pylist(RECORDS), paths["parquet"])
    return paths


FIELDS = "fields: {instruction: q, context: ctx, response: a, id: key}\n"


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "parquet"])
def test_local_files_of_every_format_give_the_examples_written(tmp_path: Path, kind: str) -> None:
    write_records(tmp_path)
    expected = [Example(id=r["key"], instruction=r["q"], context=r["ctx"], response=r["a"], category="local")
                for r in RECORDS]  # no category column: the task's name
    assert sources.load(file_task(tmp_path, f"d.{kind}", FIELDS)).examples == expected


def test_files_are_read_through_datasets_and_cached_by_content(tmp_path: Path, cache_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read prepares Arrow in <cache>/datasets keyed by the file's sha256; later reads of that content
    memory-map it without importing ``datasets``; new content at the same path and mtime is read afresh."""
    import hashlib
    import os

    paths = write_records(tmp_path)
    task = file_task(tmp_path, "d.jsonl", FIELDS)
    first = sources.load(task).examples
    sha = hashlib.sha256(paths["jsonl"].read_bytes()).hexdigest()
    specs = [json.loads(p.read_text("utf-8")) for p in (cache_dir / "datasets").glob("*/spec.json")]
    entry = next(spec for spec in specs if spec["source_sha256"] == sha)
    assert entry["format"] == "jsonl" and entry["rows"] == 3 and entry["arrow"]
    sources._PARSED.clear()
    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it now fails
    assert sources.load(task).examples == first
    monkeypatch.undo()
    stat = paths["jsonl"].stat()
    write(paths["jsonl"], "\n".join(json.dumps({**r, "a": r["a"] + "!"}) for r in RECORDS))
    os.utime(paths["jsonl"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [e.response for e in sources.load(task).examples] == [r["a"] + "!" for r in RECORDS]


def test_a_column_of_mixed_types_reads_as_its_values_every_time(tmp_path: Path) -> None:
    """pyarrow needs one type per column; ``datasets`` then keeps the column as JSON, which kdbench decodes (ids
    1 and "x", not '1' and '"x"'), also on a second read from the cache."""
    write(tmp_path / "m.jsonl", '{"key": 1, "q": "a", "a": "b"}\n{"key": "x", "q": "c", "a": "d"}\n')
    task = file_task(tmp_path, "m.jsonl", FIELDS)
    for _ in range(2):
        sources._PARSED.clear()
        assert [e.id for e in sources.load(task).examples] == ["1", "x"]


def test_a_missing_column_names_the_file_row_and_key(tmp_path: Path) -> None:
    write(tmp_path / "d.jsonl", '{"instruction": "a", "response": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(TaskError, match=r"d\.jsonl: row 2 has no value \(missing or null\) in column 'response' "
                                        r"\(mapped by key 'fields\.response'"):
        sources.load(file_task(tmp_path, "d.jsonl"))
    write(tmp_path / "n.jsonl", '{"instruction": "a", "answer": "b"}\n')
    with pytest.raises(TaskError, match=r"n\.jsonl: row 1 has no column 'response' \(mapped by key"):
        sources.load(file_task(tmp_path, "n.jsonl"))


def test_a_json_file_that_is_not_a_list_says_so(tmp_path: Path) -> None:
    write(tmp_path / "o.json", '{"instruction": "a", "response": "b"}')
    with pytest.raises(TaskError, match=r"o\.json: a JSON data file must hold a list of objects.*name it \.jsonl"):
        sources.load(file_task(tmp_path, "o.json"))


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    write(tmp_path / "d.jsonl", '{"instruction": "a", "response": "b"}\n{"instruction": \n')
    with pytest.raises(TaskError, match=r"d\.jsonl: line 2 is not valid JSON"):
        sources.load(file_task(tmp_path, "d.jsonl"))


def test_a_missing_local_file_is_missing_data(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"key 'source\.file': 'nope\.jsonl' not found"):
        sources.load(file_task(tmp_path, "nope.jsonl"))


def test_without_its_file_dolly_says_where_to_put_it_and_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as info:
        make_splits(load_task("dolly"), data_dir=tmp_path)
    message = str(info.value)
    assert f"{tmp_path}/databricks-dolly-15k.jsonl" in message and "--data-dir DIR" in message
    assert "https://raw.githubusercontent.com/databrickslabs/dolly/d000e3030970379aabbf6d291f50ffdd3b715b64/" in message


def test_a_data_dir_that_does_not_exist_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingDataError, match=rf"--data-dir {tmp_path}/absent: no such directory or file"):
        make_splits(load_task("dolly"), data_dir=tmp_path / "absent")
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(MissingDataError, match=r"\$KDBENCH_DATA_DIR .*/gone: no such directory"):
        make_splits(load_task("vicuna"))


@pytest.fixture
def dolly_copy(real_data: Path, tmp_path: Path) -> Callable[[Callable[[list[str]], list[str]]], Path]:
    """A directory holding the real Dolly file changed by ``edit`` (a function of its lines)."""
    lines = (real_data / "databricks-dolly-15k.jsonl").read_text("utf-8").split("\n")

    def make(edit: Callable[[list[str]], list[str]]) -> Path:
        write(tmp_path / "copy" / "databricks-dolly-15k.jsonl", "\n".join(edit(list(lines))))
        return tmp_path / "copy"

    return make


def test_a_short_dolly_file_is_named_short_with_both_hashes(dolly_copy: Callable[..., Path]) -> None:
    data = dolly_copy(lambda lines: lines[:450])
    copy = data / "databricks-dolly-15k.jsonl"
    with pytest.raises(PinMismatchError) as info:
        make_splits(load_task("dolly"), data_dir=data)
    message = str(info.value)
    assert f"{copy} (sha256 {sources.file_sha256(copy)}, 450 rows)" in message
    assert "4b4981dc65a58e530ec86c0074ea2bd4e465615c0e80cec5218853e6ac512a9a, 15,015 rows" in message
    assert "it is short: 450 of 15,015 rows" in message and "raw.githubusercontent.com/databrickslabs/dolly" in message


def test_an_empty_data_file_says_it_is_empty(dolly_copy: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(PinMismatchError, match="it is empty"):
        make_splits(load_task("dolly"), data_dir=dolly_copy(lambda lines: []))
    write(tmp_path / "e.jsonl", "")
    with pytest.raises(TaskError, match=r"e\.jsonl: the data file holds no rows; expected one JSON object per line"):
        sources.load(file_task(tmp_path, "e.jsonl"))


def test_a_malformed_dolly_file_names_the_line(dolly_copy: Callable[..., Path]) -> None:
    data = dolly_copy(lambda lines: [*lines[:6], lines[6][:40], *lines[7:]])
    with pytest.raises(TaskError, match=r"databricks-dolly-15k\.jsonl: line 7 is not valid JSON .*expected one JSON "
                                        r"object per line .*get a fresh copy"):
        make_splits(load_task("dolly"), data_dir=data)


def test_an_unpinned_short_file_says_the_z_protocol_needs_more_rows(tmp_path: Path) -> None:
    rows = [{"instruction": f"q{k}", "context": "", "response": f"a{k}", "category": "open_qa"} for k in range(30)]
    write(tmp_path / "short.jsonl", "\n".join(json.dumps(r) for r in rows))
    task = load_task(str(write(tmp_path / "t.yaml", "name: local\nversion: 1\nsource: {file: short.jsonl}\n"
                                                    "splits: {protocol: dolly-z, holdout_rows: 40, eval_rows: 5}\n")))
    with pytest.raises(TaskError, match=r"short\.jsonl: 30 rows, but task 'local' .*holds out the first 40 .*the "
                                        "file is short"):
        make_splits(task)


def test_another_version_of_dolly_names_both_hashes_and_freezing_your_own(
    dolly_copy: Callable[..., Path], tmp_path: Path
) -> None:
    """Like the Hugging Face revision (rows removed, texts corrected): refused with both hashes, and the manifest
    the message describes freezes and verifies on that file."""
    data = dolly_copy(lambda lines: [line.replace("Virgin Australia", "Virgin Australia Airlines", 1)
                                     for k, line in enumerate(lines) if k not in (10, 20, 30, 40)])
    copy = data / "databricks-dolly-15k.jsonl"
    sha = sources.file_sha256(copy)
    with pytest.raises(PinMismatchError) as info:
        make_splits(load_task("dolly"), data_dir=data)
    message = str(info.value)
    assert sha in message and "4b4981dc65a58e530ec86c0074ea2bd4e465615c0e80cec5218853e6ac512a9a" in message
    assert f"source: {{sha256: {sha}, rows: 15011}}" in message and "kdbench tasks freeze YOUR.yaml" in message
    own = write(tmp_path / "mine" / "dolly-mine.yaml", f"include: {available_tasks()['dolly'].resolve()}\n"
                f"name: dolly-mine\nsource: {{sha256: {sha}, rows: 15011}}\n")
    task = load_task(str(own))
    splits = make_splits(task, data_dir=data)
    written = json.loads(freeze_splits(task, splits).read_text("utf-8"))
    assert written["source"] == {"kind": "file", "file": copy.name, "sha256": sha, "rows": 15011}  # no claimed origin
    assert verify_splits(task, make_splits(task, data_dir=data)) is True


def test_mini_llm_sets_are_looked_up_in_the_hub_layout(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=rf"Put it at {tmp_path}/MiniLLM/uinst/11_/valid\.jsonl; .*"
                                               rf"--local-dir {tmp_path}/MiniLLM/uinst`"):
        make_splits(load_task("un-ni"), data_dir=tmp_path)


def test_the_data_dir_comes_from_the_environment_and_may_be_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(DATA))  # the fixture is not the pinned file: check_pin=False
    assert len(sources.load(load_task("vicuna"), check_pin=False).examples) == 10
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(DATA / "MiniLLM" / "Vicuna" / "valid.jsonl"))
    assert len(sources.load(load_task("vicuna"), check_pin=False).examples) == 10


def fake_datasets(monkeypatch: pytest.MonkeyPatch, load: Callable[..., Any]) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_online_hub_tasks_load_through_datasets_with_the_pinned_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    rows = [json.loads(line) for line in (DATA / "MiniLLM/self-inst/valid.jsonl").read_text("utf-8").split("\n")
            if line]

    def load_dataset(path: str, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((path, kwargs))
        return rows

    fake_datasets(monkeypatch, load_dataset)
    loaded = sources.load(load_task("un-ni"))
    assert calls == [("MiniLLM/uinst", {"revision": "b3c77603ffaf9b9c15dc1f1a20dc2f2145580db0",
                                        "data_files": "11_/valid.jsonl", "split": "train"})]
    assert len(loaded.examples) == len(rows) and loaded.origin["kind"] == "hub"


def test_a_failing_hub_load_says_how_to_provide_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(path: str, **kwargs: Any) -> None:
        raise ConnectionError("no route to host")

    fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(MissingDataError, match=r"could not load MiniLLM/Vicuna@main .*no route to host.*Put it at"):
        sources.load(load_task("vicuna"))


# --- split manifests ----------------------------------------------------------------------------------------------
@pytest.fixture
def frozen_copy(tmp_path: Path) -> tuple[Task, Path]:
    """dolly-micro on a copy of its data, frozen beside a manifest in tmp_path."""
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    manifest = write(tmp_path / "copy.yaml", f"include: {DOLLY_MICRO}\nname: dolly-copy\n")
    task = load_task(str(manifest))
    freeze_splits(task, make_splits(task, data_dir=data))
    return task, data / "databricks-dolly-15k.jsonl"


def test_a_one_character_change_in_the_data_fails_verification_naming_role_and_file(
    frozen_copy: tuple[Task, Path],
) -> None:
    task, data_file = frozen_copy
    assert verify_splits(task, make_splits(task, data_dir=data_file.parent)) is True
    text = data_file.read_text("utf-8")
    data_file.write_text(text.replace("Marrowdale", "Marrowdalf", 1), encoding="utf-8")
    frozen = json.loads(split_manifest_path(task).read_text("utf-8"))
    role = next(r for r, info in frozen["roles"].items() if "dolly-00000" in info["ids"])
    with pytest.raises(PinMismatchError):  # the pinned sha256 catches it first
        make_splits(task, data_dir=data_file.parent)
    with pytest.raises(TaskError) as info:
        verify_splits(task, make_splits(task, data_dir=data_file.parent, check_pin=False))
    message = str(info.value)
    assert f"role {role!r} computed from {data_file} does not match" in message
    assert str(split_manifest_path(task)) in message and f"same {frozen['roles'][role]['n']} ids" in message
    assert "is not the one the split manifest was frozen from" in message


def test_freeze_refuses_to_change_a_frozen_manifest_unless_forced(frozen_copy: tuple[Task, Path]) -> None:
    task, data_file = frozen_copy
    data_file.write_text(data_file.read_text("utf-8").replace("Marrowdale", "Marrowdalf", 1), encoding="utf-8")
    changed = make_splits(task, data_dir=data_file.parent, check_pin=False)
    with pytest.raises(TaskError, match="Refusing to overwrite"):
        freeze_splits(task, changed)
    freeze_splits(task, changed, force=True)
    assert verify_splits(task, changed) is True


def test_the_shipped_fixture_split_manifest_matches_the_fixture_data() -> None:
    task = load_task(str(DOLLY_MICRO))
    assert verify_splits(task, make_splits(task, data_dir=DATA)) is True
