"""The published study as data: board files, and `kdbench leaderboard reproduce` running them end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.core.errors import KdbenchError
from kdbench.leaderboard.boards import load_board, select_blocks, select_boards, write_grid_files
from kdbench.run.grid import load_grid_file

REPO = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).parent / "fixtures" / "tiny-task.yaml")


def _board(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_boards_load_and_expand_to_valid_grid_files(tmp_path: Path) -> None:
    boards = select_boards(REPO / "leaderboard" / "boards", ())
    assert {b.name for b in boards} >= {"default", "dolly"}
    default = next(b for b in boards if b.name == "default")
    techniques, defenses = (dict(b.grid) for b in default.blocks)
    # the study the issue defines: six distillers + the no-KD recipe with no defense, and every defense on kd and
    # an on-policy distiller, 3 seeds, both protocols
    assert set(techniques["distillers"]) == {"sft", "kd", "seqkd", "gkd", "imitkd", "distillm", "minillm"}
    assert techniques["defenses"] == ["none"]
    assert set(defenses["distillers"]) == {"kd", "gkd"}
    assert techniques["seeds"] == [0, 1, 2]
    assert set(techniques["tasks"]) == {"synthetic-pii", "synthetic-pii-private"}
    from kdbench.core.registry import get_registry

    defense_names = {spec.split(":")[0] for spec in defenses["defenses"]}
    assert defense_names == set(get_registry().names("defenses")) - {"none"}
    for board in boards:
        for block_run in write_grid_files(board, tmp_path):
            grid = load_grid_file(block_run.grid_file)  # the run command's own reader accepts every block
            assert grid["task"] and grid["distiller"] and grid["attack"]


def test_shipped_grid_files_name_known_tasks_and_plugins() -> None:
    from kdbench.core.registry import get_registry
    from kdbench.tasks.manifest import load_task

    grids = sorted((REPO / "leaderboard" / "grids").glob("*.yaml"))
    assert grids
    registry = get_registry()
    for path in grids:
        grid = load_grid_file(path)
        tasks = [load_task(name) for name in grid["task"]]
        assert all(name.split(":")[0] in registry.names("distillers") for name in grid["distiller"]), path
        assert all(name.split(":")[0] in registry.names("attacks") for name in grid["attack"]), path
        if path.stem == "protocols":  # [Z]'s protocol beside [C]'s, on the same data
            assert sorted(t.distill_on for t in tasks) == ["private", "public"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid: {tasks: [a]}\nblocks: {x: {distillers: [kd], attacks: [loss], seeds: [0], sede: 1}}", "sede"),
        ("grid: {tasks: [a], attacks: [loss]}\nblocks: {x: {distillers: [kd], attacks: [mink]}}", "already set"),
        ("grid: {tasks: [a]}\nblocks: {x: {distillers: [kd]}}", "no 'attack'"),
        ("grid: {tasks: [a]}\nblockz: {}", "blockz"),
        ("grid: {tasks: [a]}\nblocks: []", "'blocks' must map"),
        ("grid: {tasks: [a], attacks: [loss]}\nblocks: {'Bad Name': {distillers: [kd]}}", "block name"),
    ],
)
def test_bad_board_files_are_refused_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _board(tmp_path, "b", text)
    with pytest.raises(KdbenchError, match=message) as caught:
        load_board(path)
    assert str(path) in str(caught.value)


def test_unknown_board_gets_did_you_mean(tmp_path: Path) -> None:
    _board(tmp_path, "default", "grid: {tasks: [a], attacks: [loss]}\nblocks: {x: {distillers: [kd]}}")
    with pytest.raises(KdbenchError, match="Did you mean 'default'"):
        select_boards(tmp_path, ("defualt",))


def test_a_study_runs_in_parts_by_block(tmp_path: Path) -> None:
    _board(tmp_path, "default", "grid: {tasks: [a], attacks: [loss]}\n"
                                "blocks: {techniques: {distillers: [kd]}, defenses: {distillers: [gkd]}}")
    _board(tmp_path, "dolly", "grid: {tasks: [a], attacks: [loss]}\nblocks: {techniques: {distillers: [kd]}}")
    boards = select_boards(tmp_path, ())
    cut = select_blocks(boards, ("defenses",))
    assert [(b.name, [k.name for k in b.blocks]) for b in cut] == [("default", ["defenses"])]
    assert cut[0].blocks[0].grid["distillers"] == ["gkd"]
    assert select_blocks(boards, ()) == boards
    with pytest.raises(KdbenchError, match="Did you mean 'defenses'"):
        select_blocks(boards, ("defence",))


def test_reproduce_runs_every_block_appends_with_provenance_builds_the_site_and_resumes(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    _board(boards, "tiny", f"""
grid: {{tasks: ["{TINY}"], seeds: [0], attacks: [loss]}}
blocks:
  techniques: {{distillers: [sft, kd], defenses: [none]}}
  defenses: {{distillers: [kd], defenses: [nonorm]}}
""")
    # a board on real data is skipped, with a reason, when no --data-dir is given
    _board(boards, "real", f'data_dir: true\ngrid: {{tasks: ["{TINY}"], attacks: [loss]}}\n'
                           "blocks: {x: {distillers: [kd]}}")
    into = tmp_path / "results" / "results.jsonl"
    into.parent.mkdir()
    args = ["leaderboard", "reproduce", "--boards-dir", str(boards), "--runs-dir", str(tmp_path / "runs"),
            "--into", str(into), "--site", str(tmp_path / "site")]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "Skipped board real" in first.output
    records = [json.loads(line) for line in into.read_text(encoding="utf-8").splitlines()]
    cells = {(r["distiller"], r["defense"]) for r in records if r["target"] == "student"}
    assert cells == {("sft", "none"), ("kd", "none"), ("kd", "nonorm")}
    for record in records:
        study = record["provenance"]["study"]
        assert study["board"] == "tiny" and study["block"] in {"techniques", "defenses"}
        assert study["run_wall_time"] > 0
        assert study["machine"]["cpus"] >= 1
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "runs" / "tiny" / "techniques.grid.yaml").is_file()

    # the same command again: every block resumes from the cache, nothing is appended twice
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    after = [json.loads(line) for line in into.read_text(encoding="utf-8").splitlines()]
    extra = after[len(records):]
    if extra:  # say which fields made a resumed run's record a new measurement
        def same_cell(a: dict, b: dict) -> bool:
            return all(a.get(k) == b.get(k) for k in ("target", "distiller", "defense", "attack", "task", "seed"))
        diffs = [sorted(k for k in set(e) | set(r) if k not in ("run_id", "provenance") and e.get(k) != r.get(k))
                 for e in extra for r in records if same_cell(e, r)]
        raise AssertionError(f"a resumed run appended {len(extra)} record(s); fields that differ: {diffs}")
    assert "added 0 record(s)" in again.output
    for block in ("techniques", "defenses"):
        run = json.loads((tmp_path / "runs" / "tiny" / block / "run.json").read_text(encoding="utf-8"))
        builds = run["cache"]["builds"]
        assert not builds, f"{block} rebuilt {builds} on resume"


def test_pages_on_licensed_data_carry_its_attribution(tmp_path: Path) -> None:
    from kdbench.leaderboard.site import build_site
    from tests.helpers import make_record

    records = []
    for task in ("dolly-study-tiny", "synthetic-pii"):
        records += [make_record(None, None, target="teacher", task=task, auc=0.8),
                    make_record(None, None, target="baseline", task=task, auc=0.5),
                    make_record("kd", "none", task=task, auc=0.7)]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    build_site([results], tmp_path / "site")
    dolly = (tmp_path / "site" / "dolly-study-tiny" / "index.html").read_text(encoding="utf-8")
    generated = (tmp_path / "site" / "synthetic-pii" / "index.html").read_text(encoding="utf-8")
    # the license line as the shipped manifest states it (tasks/dolly.yaml, source.origin.license)
    assert "CC BY-SA 3.0 (databricks-dolly-15k, © Databricks, Inc.)" in dolly
    assert "CC BY-SA" not in generated


def test_add_skips_a_record_that_repeats_a_measurement_from_another_commit_or_run(tmp_path: Path) -> None:
    from kdbench.cli.leaderboard import add_records
    from tests.helpers import make_record

    first = make_record("kd", "none", auc=0.7)
    again = {**first, "run_id": "another-run", "git_commit": "0" * 40,
             "provenance": {**first["provenance"], "note": "resumed at a later commit"}}
    different = {**first, "auc": 0.71}
    into = tmp_path / "results.jsonl"
    for name, record in (("a", first), ("b", again), ("c", different)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        add_records([path], into)
    kept = [json.loads(line) for line in into.read_text(encoding="utf-8").splitlines()]
    assert [r["auc"] for r in kept] == [0.7, 0.71]  # the repeat is skipped, a new number is not


def test_an_edited_board_moves_the_stale_run_of_its_block_aside(tmp_path: Path) -> None:
    """`kdbench run` refuses a run directory of another configuration; after the board is edited, the changed
    block's old run is kept under <block>.superseded-1 and the block starts afresh; an unchanged block keeps its run
    directory (it resumes)."""
    board = load_board(REPO / "leaderboard" / "boards" / "default.yaml")
    runs = tmp_path / "runs"
    first = list(write_grid_files(board, runs))
    for block_run in first:
        block_run.out.mkdir()
        (block_run.out / "run.json").write_text("{}")
    assert all(r.superseded is None for r in first)
    assert all(r.superseded is None for r in write_grid_files(board, runs))  # the same board: nothing moves
    techniques, defenses = board.blocks
    edited = dataclasses.replace(board, blocks=(techniques, dataclasses.replace(
        defenses, grid={**defenses.grid, "seeds": [0]})))
    second = {r.block.name: r for r in write_grid_files(edited, runs)}
    assert second["techniques"].superseded is None and (second["techniques"].out / "run.json").exists()
    moved = second["defenses"].superseded
    assert moved == runs / "default" / "defenses.superseded-1" and (moved / "run.json").exists()
    assert not second["defenses"].out.exists()
    assert "seeds:\n- 0\n" in second["defenses"].grid_file.read_text()
