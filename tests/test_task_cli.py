"""``kdbench tasks`` list/show/validate/verify/freeze on every shipped task, and ``kdbench run`` on Dolly's format."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kdbench.cli import main
from kdbench.tasks.manifest import available_tasks, load_task
from kdbench.tasks.sources import DATA_DIR_ENV

FIXTURES = Path(__file__).parent / "fixtures"
DATA = FIXTURES / "data"
DOLLY_MICRO = FIXTURES / "tasks" / "dolly-micro.yaml"
SHIPPED = sorted(available_tasks())
GENERATED = [name for name in SHIPPED if load_task(name).source_kind == "generator"]
REAL = [name for name in SHIPPED if name not in GENERATED]  # on real data (../shared/data)
UNAVAILABLE = {"un-ni"}  # its data has no usable public copy: unfrozen


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def kdbench(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def data_args(name: str, data: Path) -> list[str]:
    return ["--data-dir", str(data)] if name in REAL else []


# --- list and validate --------------------------------------------------------------------------------------------
def test_list_shows_every_shipped_task_and_whether_it_is_frozen() -> None:
    result = kdbench("tasks", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert sorted(rows) == SHIPPED
    assert {name for name in SHIPPED if not rows[name]["frozen"]} == UNAVAILABLE
    assert rows["dolly"]["source"] == "file databricks-dolly-15k.jsonl"
    plain = kdbench("tasks", "list")
    assert plain.exit_code == 0 and "synthetic-pii" in plain.output


def test_validate_checks_every_shipped_task_without_data() -> None:
    result = kdbench("tasks", "validate", "--json")
    assert result.exit_code == 0, result.output
    checked = json.loads(result.output)
    assert len(checked) == len(SHIPPED) and all(entry["ok"] for entry in checked)


MALFORMED = {
    "unknown-key.yaml": ("name: x\nversion: 1\nsource: {generator: synthetic-pii}\nsplits: {protocol: eval-only}\n"
                         "colour: blue\n", "unknown key 'colour'"),
    "missing-source.yaml": ("name: x\nversion: 1\nsplits: {protocol: eval-only}\n", "missing required key 'source'"),
    "overlapping-roles.yaml": ("name: x\nversion: 1\nsource: {file: d.jsonl}\nsplits: {protocol: ranges, ranges: "
                               "{private: [0, 9], public: [5, 12], holdout: [12, 14], eval: [14, 15]}}\n",
                               "key 'splits.ranges.public' overlaps 'splits.ranges.private'"),
    "negative-size.yaml": ("name: x\nversion: 1\nsource: {file: d.jsonl}\nsplits: {protocol: eval-only, sizes: "
                           "{eval: -3}}\n", "key 'splits.sizes.eval' is -3, must be at least 0"),
    "wrong-type.yaml": ("name: x\nversion: '1'\nsource: {file: d.jsonl}\nsplits: {protocol: eval-only}\n",
                        "key 'version' must be int, got str"),
    "cycle-a.yaml": ("include: cycle-b.yaml\nname: x\n", "key 'include': include cycle"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_validate_fails_on_each_malformed_manifest_naming_file_and_key(name: str, tmp_path: Path) -> None:
    (tmp_path / "cycle-b.yaml").write_text("include: cycle-a.yaml\nversion: 1\n", encoding="utf-8")
    path = tmp_path / name
    text, message = MALFORMED[name]
    path.write_text(text, encoding="utf-8")
    result = kdbench("tasks", "validate", str(path))
    assert result.exit_code != 0
    assert message in result.output and ".yaml" in result.output and "invalid" in result.output
    shown = kdbench("tasks", "show", str(path))  # every command refuses it the same way
    assert shown.exit_code != 0 and message in shown.output


def test_validate_reports_each_file_and_fails_if_any_is_bad(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MALFORMED["negative-size.yaml"][0], encoding="utf-8")
    result = kdbench("tasks", "validate", str(available_tasks()["dolly"]), str(bad))
    assert result.exit_code == 1
    assert re.search(r"ok .*dolly\.yaml", result.output) and f"invalid {bad}" in result.output


# --- show ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [name for name in SHIPPED if name not in UNAVAILABLE])
def test_show_works_on_every_shipped_task_and_never_prints_members(name: str, real_data: Path) -> None:
    result = kdbench("tasks", "show", name, "--json", "--examples", "3", *data_args(name, real_data))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    task = load_task(name)
    assert list(report["roles"]) == list(task.roles)
    assert all(info["n"] > 0 and len(info["sha256"]) == 64 for info in report["roles"].values())
    assert "private" not in report["examples"]
    assert report["split_manifest"]["status"] == "verified" and "note" not in report

    plain = kdbench("tasks", "show", name, "--examples", "3", *data_args(name, real_data))
    assert plain.exit_code == 0, plain.output
    if not task.eval_only:
        from kdbench.tasks.splits import make_splits

        private = {e.id for e in make_splits(task, data_dir=real_data).roles["private"]}
        printed = set(re.findall(r"\b[a-z-]+-\d{5}\b", plain.output))
        assert printed and not printed & private


def test_show_reports_duplicates_and_a_data_file_other_than_the_pinned_one() -> None:
    other = kdbench("tasks", "show", "dolly", "--data-dir", str(DATA / "databricks-dolly-15k.jsonl"))
    assert other.exit_code == 2  # 125 rows cannot fill the [Z] protocol's 4,000 non-member rows
    assert "125 rows, but task 'dolly'" in other.output
    micro = json.loads(kdbench("tasks", "show", str(DOLLY_MICRO), "--json", "--data-dir", str(DATA)).output)
    assert micro["duplicates_dropped"] == 3 and "note" not in micro  # dolly-micro pins the fixture file
    vicuna = json.loads(kdbench("tasks", "show", "vicuna", "--json", "--data-dir", str(DATA)).output)
    assert "'source.sha256'" in vicuna["note"] and vicuna["split_manifest"]["status"] == "mismatch"


def test_show_without_the_data_says_which_file_to_put_where(tmp_path: Path) -> None:
    result = kdbench("tasks", "show", "dolly", "--data-dir", str(tmp_path))
    assert result.exit_code == 2  # refused with a message (docs/running.md: exit statuses)
    flat = " ".join(result.output.split())
    assert f"{tmp_path}/databricks-dolly-15k.jsonl" in flat and "raw.githubusercontent.com/databrickslabs" in flat


# --- verify and freeze --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_verify_on_every_shipped_task(name: str, real_data: Path) -> None:
    result = kdbench("tasks", "verify", name, "--json", *data_args(name, real_data))
    [verdict] = json.loads(result.output)
    if name in UNAVAILABLE:  # said loudly, but not a failure unless --strict
        assert (result.exit_code, verdict["status"]) == (0, "unfrozen")
        assert f"kdbench tasks freeze {name} --data-dir DIR" in verdict["message"]
        assert "Its data is not available" in verdict["message"]
        strict = kdbench("tasks", "verify", name, "--strict", *data_args(name, real_data))
        assert strict.exit_code == 1 and "unfrozen" in strict.output
    else:
        assert (result.exit_code, verdict["status"]) == (0, "verified"), verdict["message"]


def test_verify_on_a_fresh_checkout_checks_frozen_manifests_without_data() -> None:
    result = kdbench("tasks", "verify", "--json")
    assert result.exit_code == 0, result.output
    status = {v["task"]: v["status"] for v in json.loads(result.output)}
    assert {name for name, s in status.items() if s == "verified"} == set(GENERATED)  # recomputed: no data needed
    assert {name for name, s in status.items() if s == "consistent"} == set(REAL) - UNAVAILABLE
    assert {name for name, s in status.items() if s == "unfrozen"} == UNAVAILABLE
    assert kdbench("tasks", "verify", "--strict").exit_code == 1


@pytest.mark.parametrize("damage", ["count", "overlap", "pin", "version"])
def test_verify_without_data_catches_an_inconsistent_split_manifest(damage: str, tmp_path: Path) -> None:
    """A copy of dolly's manifest and split manifest, one thing broken: verify fails naming it, without data."""
    manifest = tmp_path / "dolly.yaml"
    manifest.write_text(available_tasks()["dolly"].resolve().read_text("utf-8"), encoding="utf-8")
    frozen = json.loads((available_tasks()["dolly"].resolve().parent / "splits" / "dolly.json").read_text("utf-8"))
    expected = {
        "count": "role 'eval' must list its ids, as many as its 'n'",
        "overlap": "is in roles 'private' and 'public'",
        "pin": "frozen from a file with sha256",
        "version": "key 'version' is 1",
    }[damage]
    if damage == "count":
        frozen["roles"]["eval"]["ids"].pop()
    elif damage == "overlap":
        frozen["roles"]["public"]["ids"].append(frozen["roles"]["private"]["ids"][0])
        frozen["roles"]["public"]["n"] += 1
    elif damage == "pin":
        frozen["source"]["sha256"] = "0" * 64
    else:
        frozen["version"] = 1
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "dolly.json").write_text(json.dumps(frozen), encoding="utf-8")
    result = kdbench("tasks", "verify", str(manifest))
    assert result.exit_code == 1 and expected in " ".join(result.output.split())


def test_verify_splits_an_unfrozen_task_with_data_and_reports_errors_as_such(tmp_path: Path) -> None:
    manifest = tmp_path / "fresh.yaml"
    manifest.write_text(f"include: {DOLLY_MICRO}\nname: dolly-fresh\n", encoding="utf-8")
    ok = json.loads(kdbench("tasks", "verify", str(manifest), "--json", "--data-dir", str(DATA)).output)[0]
    assert ok["status"] == "unfrozen" and "Data loaded and split (private 42" in ok["message"]
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "databricks-dolly-15k.jsonl").write_text('{"instruction": "a", "response": \n', encoding="utf-8")
    result = kdbench("tasks", "verify", str(manifest), "--json", "--data-dir", str(broken))
    [verdict] = json.loads(result.output)
    assert result.exit_code == 1 and verdict["status"] == "error" and "could not be split" in verdict["message"]
    empty = json.loads(kdbench("tasks", "verify", str(manifest), "--json", "--data-dir", str(tmp_path)).output)[0]
    assert empty["status"] == "unfrozen" and "Its data is not available" in empty["message"]


@pytest.fixture
def frozen_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest including dolly-micro, frozen with `kdbench tasks freeze` from a copy of the fixture data."""
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    manifest = tmp_path / "copy.yaml"
    manifest.write_text(f"include: {DOLLY_MICRO}\nname: dolly-copy\n", encoding="utf-8")
    result = kdbench("tasks", "freeze", str(manifest), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "splits" / "dolly-copy.json").is_file()
    return manifest, data / "databricks-dolly-15k.jsonl"


def test_verify_fails_when_a_data_file_changed_by_one_character(frozen_copy: tuple[Path, Path]) -> None:
    manifest, data_file = frozen_copy
    assert kdbench("tasks", "verify", str(manifest), "--data-dir", str(data_file.parent)).exit_code == 0
    data_file.write_text(data_file.read_text("utf-8").replace("Marrowdale", "Marrowdalf", 1), encoding="utf-8")
    frozen = json.loads((manifest.parent / "splits" / "dolly-copy.json").read_text("utf-8"))
    role = next(r for r, info in frozen["roles"].items() if "dolly-00000" in info["ids"])
    for skip in ([], ["--skip-unavailable"]):  # a mismatch always fails
        result = kdbench("tasks", "verify", str(manifest), "--data-dir", str(data_file.parent), *skip)
        assert result.exit_code == 1
        flat = " ".join(result.output.split())
        assert "mismatch" in flat and f"role '{role}' computed from {data_file} does not match" in flat


def test_freeze_refuses_a_data_file_other_than_the_pinned_one(frozen_copy: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, data_file = frozen_copy
    data_file.write_text(data_file.read_text("utf-8").replace("Marrowdale", "Marrowdalf", 1), encoding="utf-8")
    refused = kdbench("tasks", "freeze", str(manifest), "--data-dir", str(data_file.parent))
    assert refused.exit_code == 2 and "'source.sha256'" in refused.output
    out = tmp_path / "elsewhere.json"
    forced = kdbench("tasks", "freeze", str(manifest), "--data-dir", str(data_file.parent), "--force",
                     "--out", str(out))
    assert forced.exit_code == 0 and json.loads(out.read_text("utf-8"))["task"] == "dolly-copy"


# --- end to end ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_on_dolly_format_data_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["run", "--task", str(DOLLY_MICRO), "--data-dir", str(DATA), "--distiller", "kd", "--attack", "loss",
         "--out", str(out)],
        env={"KDBENCH_CACHE_DIR": str(cache_dir)},
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text("utf-8").splitlines()]
    assert {r["target"] for r in records} == {"teacher", "baseline", "student"}
    assert {r["task"] for r in records} == {"dolly-micro"}
    frozen = json.loads((DOLLY_MICRO.parent / "splits" / "dolly-micro.json").read_text("utf-8"))
    hashes = {role: info["sha256"] for role, info in frozen["roles"].items()}
    assert contains(json.loads((out / "run.json").read_text("utf-8")), hashes)  # the verified splits were used


def contains(value: object, wanted: dict[str, str]) -> bool:
    """Whether ``wanted`` occurs anywhere in a JSON value (run.json's layout is the runner's business)."""
    if value == wanted:
        return True
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return any(contains(child, wanted) for child in children)


def test_sequence_caps_follow_the_models_positions() -> None:
    """Hand-computed caps: dolly.yaml (512 total, 256 prompt, 256 new tokens) on the embedded models' 256 positions
    -> 256 total, prompt 128; synthetic-pii at [Z]'s 256/512 (64 new tokens) -> prompt 192; nothing changes when the
    models fit."""
    from kdbench.run.plan import effective_lengths, model_positions

    positions = model_positions(["builtin:gpt2-tiny-teacher", "builtin:gpt2-tiny-student"])
    assert positions == 256 and model_positions(["builtin:gpt2-micro", "builtin:gpt2-tiny-student"]) == 128
    assert effective_lengths(load_task("dolly"), positions) == (128, 256)
    synthetic = load_task("synthetic-pii")
    assert effective_lengths(synthetic, positions) == (192, 256)  # its own lengths: nothing to cap
    as_z = replace(synthetic, models=replace(synthetic.models, max_prompt_tokens=256, max_total_tokens=512))
    assert effective_lengths(as_z, positions) == (192, 256)  # 256 - 64 new tokens > 256 // 2
    assert effective_lengths(load_task("dolly"), 1024) == (256, 512)
    assert effective_lengths(load_task("dolly"), None) == (256, 512)  # hub models: their own limits apply


@pytest.mark.slow
def test_run_on_real_dolly_rows_end_to_end(real_data: Path, tmp_path: Path, cache_dir: Path) -> None:
    """`kdbench run --data-dir ../shared/data` on a slice of the real Dolly file (dolly's own cut and pins, a few
    dozen rows per role, micro models): the frozen slice is what was trained and attacked."""
    manifest = FIXTURES / "tasks" / "dolly-real-slice.yaml"
    frozen = json.loads((manifest.parent / "splits" / "dolly-real-slice.json").read_text("utf-8"))
    rows = {role: [int(i.removeprefix("dolly-")) for i in info["ids"]] for role, info in frozen["roles"].items()}
    assert max(rows["holdout"] + rows["eval"]) < 4000 and all(4000 <= r < 9507 for r in rows["private"])
    assert min(rows["public"]) >= 9507 and frozen["source"]["rows"] == 15015
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["run", "--task", str(manifest), "--data-dir", str(real_data), "--distiller", "kd", "--attack", "loss",
         "--out", str(out)],
        env={"KDBENCH_CACHE_DIR": str(cache_dir)},
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text("utf-8").splitlines()]
    assert {r["target"] for r in records} == {"teacher", "baseline", "student"}
    assert {r["task"] for r in records} == {"dolly-real-slice"}
    hashes = {role: info["sha256"] for role, info in frozen["roles"].items()}
    assert contains(json.loads((out / "run.json").read_text("utf-8")), hashes)


@pytest.mark.slow
def test_real_dolly_longer_than_the_models_is_capped_and_said_once(real_data: Path, tmp_path: Path,
                                                                    cache_dir: Path) -> None:
    """dolly's 256/512 token lengths kept with micro models of 128 positions: real Dolly records are longer than
    that, so without a cap the position embedding fails; the run caps sequences at 128 and says so once."""
    manifest = tmp_path / "slice-512.yaml"
    manifest.write_text(f"include: {FIXTURES / 'tasks' / 'dolly-real-slice.yaml'}\nname: dolly-real-slice-512\n"
                        "models: {max_prompt_tokens: 256, max_total_tokens: 512}\n", encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", "--task", str(manifest), "--data-dir", str(real_data), "--distiller", "kd", "--attack", "loss",
               "--out", str(out)], env={"KDBENCH_CACHE_DIR": str(cache_dir)})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    said = "key 'models.max_total_tokens' is 512, but builtin:gpt2-micro / builtin:gpt2-micro take at most 128"
    assert flat.count(said) == 1 and "capped at 128 tokens (prompts at 112)" in flat
    records = [json.loads(line) for line in (out / "results.jsonl").read_text("utf-8").splitlines()]
    assert {r["target"] for r in records} == {"teacher", "baseline", "student"}
