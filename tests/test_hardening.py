"""Hostile inputs (issue 18): bad values are refused before any artifact is built, with a message and exit status
2; damaged or crafted model directories and results files give messages, never tracebacks or foreign files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.core.errors import EXIT_USAGE, KdbenchError, ParameterError, PluginError, TaskError
from kdbench.core.params import build_params, check_range
from kdbench.core.registry import build_registry
from kdbench.models.defended import ARCHITECTURE_KEY, MARKER
from kdbench.models.hub import (
    TOKENIZER_FILES,
    check_hub_name,
    init_model,
    load_model,
    load_tokenizer,
    save_model,
    train_bpe_tokenizer,
)
from kdbench.results.records import validate_record
from kdbench.tasks.manifest import load_task
from tests.helpers import make_distribution, make_record
from tests.test_plugins import ATTACK

TINY_PATH = Path(__file__).parent / "fixtures" / "tiny-task.yaml"
TINY = TINY_PATH.read_text(encoding="utf-8")


def refused(tmp_path: Path, *args: str, task: str | None = None) -> str:
    """Run ``kdbench run ARGS``; assert it was refused with exit 2, a message, no traceback and no output dir."""
    out = tmp_path / "out"
    base = ["run", "--task", task or str(Path(__file__).parent / "fixtures" / "tiny-task.yaml"), "--out", str(out)]
    if "--distiller" not in args and "--grid" not in args:
        base += ["--distiller", "kd"]
    if "--attack" not in args and "--grid" not in args:
        base += ["--attack", "loss"]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Error:" in result.output, result.output
    assert not out.exists(), "refused after the output directory was created"
    return " ".join(result.output.split())


# --- NaN ----------------------------------------------------------------------------------------------------------
def test_check_range_refuses_nan() -> None:
    with pytest.raises(ParameterError, match="nan"):
        check_range("x", "v", float("nan"), 0.0, 1.0)
    with pytest.raises(ParameterError, match="nan"):
        check_range("x", "v", float("nan"))  # unbounded: NaN is still no value
    check_range("x", "v", float("inf"), 0.0)  # inf is a value (gradnorm:p=inf)


@pytest.mark.parametrize("spec", ["mink:k=nan", "mink:k=NaN"])
def test_nan_attack_parameter_is_refused_up_front(tmp_path: Path, spec: str) -> None:
    assert "mink:k" in refused(tmp_path, "--attack", spec)


def test_nan_defense_parameter_is_refused_up_front(tmp_path: Path) -> None:
    assert "temperature:factor" in refused(tmp_path, "--defense", "temperature:factor=nan")


def test_nan_set_in_python_is_refused_by_the_plugins_range_check() -> None:
    params_cls = build_registry().get("defenses", "temperature").cls.Params
    with pytest.raises(ParameterError, match="factor=nan"):
        params_cls(factor=float("nan"))


# --- duplicates ---------------------------------------------------------------------------------------------------
def test_a_parameter_given_twice_is_refused(tmp_path: Path) -> None:
    assert "'k' is given twice" in refused(tmp_path, "--attack", "mink:k=0.1,k=0.5")
    params_cls = build_registry().get("attacks", "mink").cls.Params
    with pytest.raises(ParameterError, match="twice"):
        build_params(params_cls, (("k", "0.1"), ("k", "0.1")), "mink")


@pytest.mark.parametrize(("seeds", "needle"), [
    ("-1", "seed -1 is outside [0, 4294967295]"),
    (str(2**32), f"seed {2**32} is outside"),
    ("0,0", "seed 0 is given more than once"),
])
def test_bad_seeds_are_refused_before_any_artifact(tmp_path: Path, seeds: str, needle: str) -> None:
    assert needle in refused(tmp_path, "--seed", seeds)


@pytest.mark.parametrize(("body", "needle"), [
    ("seeds: [1, -1]\n", "seed -1 is outside"),
    ("seeds: [3, 3]\n", "seed 3 is given more than once"),
    ("distiller: kd\ndistillers: [sft]\n", "keys 'distiller' and 'distillers' are the same setting"),
    ("seed: 0\nseed: 1\n", "key 'seed' is given twice"),
])
def test_bad_grid_files_are_refused(tmp_path: Path, body: str, needle: str) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("attack: loss\n" + ("" if "distiller" in body else "distiller: kd\n") + body, encoding="utf-8")
    assert needle in refused(tmp_path, "--grid", str(grid))


def test_duplicate_key_in_a_task_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "dup.yaml"
    manifest.write_text(TINY.replace("version: 1\n", "version: 1\nseed: 3\n"), encoding="utf-8")
    with pytest.raises(TaskError, match=r"dup\.yaml.*key 'seed' is given twice \(first on line \d+\)"):
        load_task(str(manifest))
    assert "given twice" in refused(tmp_path, task=str(manifest))


def test_unknown_generator_parameter_is_refused_at_planning(tmp_path: Path) -> None:
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(TINY.replace("n_people: 12", "n_peopel: 12"), encoding="utf-8")
    message = refused(tmp_path, task=str(manifest))
    assert "typo.yaml" in message and "'source.params.n_peopel'" in message and "Did you mean 'n_people'" in message


def test_unknown_key_message_says_it_once(tmp_path: Path) -> None:
    manifest = tmp_path / "sede.yaml"
    manifest.write_text(TINY.replace("seed: 7", "sede: 7"), encoding="utf-8")
    with pytest.raises(TaskError) as info:
        load_task(str(manifest))
    message = str(info.value)
    assert message.lower().count("unknown key 'sede'") == 1 and "Did you mean 'seed'" in message, message


# --- non-UTF-8 input files ----------------------------------------------------------------------------------------
def test_non_utf8_task_and_grid_files(tmp_path: Path) -> None:
    manifest = tmp_path / "latin1.yaml"
    manifest.write_bytes(TINY.replace("Test-sized", "Test-sized caf\u00e9").encode("latin-1"))
    assert "latin1.yaml: the manifest is not UTF-8" in refused(tmp_path, task=str(manifest))
    grid = tmp_path / "grid.yaml"
    grid.write_bytes("attack: loss\ndistiller: kd  # caf\u00e9\n".encode("latin-1"))
    assert "grid.yaml: the grid file is not UTF-8" in refused(tmp_path, "--grid", str(grid))


# --- registration -------------------------------------------------------------------------------------------------
def test_params_field_without_a_default_is_refused_at_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ATTACK.format(name="nodefault").replace("scale: float = 1.0", "scale: float")
    make_distribution(tmp_path, "kdbench-nodefault", "kdbench_nodefault", source, {"nd": "kdbench_nodefault"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"Params field.*scale have no default"):
        build_registry()


@pytest.mark.parametrize(("name", "module"), [("lo,ss", "comma"), ("lo:ss", "colon"), ("lo=ss", "equals")])
def test_plugin_name_with_a_list_separator_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      name: str, module: str) -> None:
    package = f"kdbench_sep_{module}"  # one module name per case: an imported module stays in sys.modules
    make_distribution(tmp_path, f"kdbench-sep-{module}", package, ATTACK.format(name=name), {"sep": package})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=f"name '{name}', which contains"):
        build_registry()


DEFENSE = """
    from dataclasses import dataclass
    from kdbench import hookimpl

    @dataclass(frozen=True)
    class Params:
        pass

    class Plus:
        name = "a+b"
        description = "Test defense."
        Params = Params
        stages = frozenset()
        def __init__(self, params): self.params = params

    @hookimpl
    def register_defenses(register):
        register(Plus)
"""


def test_plus_is_refused_in_a_defense_name_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "mink++" in build_registry().names("attacks")  # + composes defense stacks, not attack lists
    make_distribution(tmp_path, "kdbench-plus", "kdbench_plus", DEFENSE, {"plus": "kdbench_plus"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"name 'a\+b', which contains '\+'"):
        build_registry()


# --- model directories --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny GPT-2 and its tokenizer, saved with save_pretrained."""
    directory = tmp_path_factory.mktemp("models") / "good"
    tokenizer = train_bpe_tokenizer(["the quick brown fox jumps"] * 20, 300)
    save_model(init_model("builtin:gpt2-micro", tokenizer, 0), tokenizer, directory)
    return directory


def copy_of(model: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(model, target)
    return target


def test_a_sound_model_directory_loads(saved_model: Path) -> None:
    assert load_model(saved_model).config.n_layer == 1 and len(load_tokenizer(saved_model)) > 1


def test_corrupt_config_json(saved_model: Path, tmp_path: Path) -> None:
    model = copy_of(saved_model, tmp_path)
    (model / "config.json").write_text('{"model_type": "gpt2", ', encoding="utf-8")
    with pytest.raises(KdbenchError, match=r"config\.json: not a valid JSON model config"):
        load_model(model)


def test_truncated_safetensors(saved_model: Path, tmp_path: Path) -> None:
    model = copy_of(saved_model, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(KdbenchError, match="truncated or damaged"):
        load_model(model)


def test_model_directory_without_tokenizer_files(saved_model: Path, tmp_path: Path) -> None:
    model = copy_of(saved_model, tmp_path)
    for name in TOKENIZER_FILES:
        (model / name).unlink(missing_ok=True)
    with pytest.raises(KdbenchError, match="has no tokenizer files"):
        load_tokenizer(model)


def test_unknown_bare_name_offline_fails_at_once(tmp_path: Path) -> None:
    """A real process with the hub endpoint on a closed local port (no HF_HUB_OFFLINE): the name is refused before
    the output directory exists, where transformers would retry for ~28 s and then print a traceback."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home")}  # an empty hub cache
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", "run", "--task", str(TINY_PATH), "--distiller", "kd", "--attack", "loss",
         "--student", "no-such-org/no-such-model", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    flat = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == EXIT_USAGE and "Traceback" not in flat, flat
    assert "no-such-org/no-such-model: no such model directory, not in the local Hugging Face cache" in flat
    assert "cannot be reached" in flat and not out.exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(tmp_path / "hf-home"))
        with pytest.raises(KdbenchError, match="HF_HUB_OFFLINE is set"):
            check_hub_name("no-such-org/no-such-model")


# --- paths read from a model directory stay inside it -------------------------------------------------------------
def test_sharded_index_pointing_outside_is_refused(saved_model: Path, tmp_path: Path) -> None:
    model = copy_of(saved_model, tmp_path, "crafted")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config[ARCHITECTURE_KEY] = [{"name": "nonorm", "params": {}}]
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(model / "model.safetensors", outside)  # a real, loadable file: only the location is wrong
    (model / "model.safetensors").unlink()
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}), encoding="utf-8")
    with pytest.raises(KdbenchError, match=r"'\.\./elsewhere\.safetensors', which lies outside the model directory"):
        load_model(model)


@pytest.mark.parametrize("marker", [
    {"defense": "ensemble", "members": ["../good"]},
    {"defense": "temperature", "base": "../good", "token_ids": [1], "operation": "scale", "value": 0.5},
    {"defense": "ensemble", "members": [str(Path("/") / "tmp")]},
])
def test_marker_paths_outside_the_model_directory_are_refused(saved_model: Path, marker: dict[str, object]) -> None:
    crafted = saved_model.parent / f"crafted-{marker['defense']}-{len(str(marker))}"
    crafted.mkdir()
    (crafted / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    with pytest.raises(KdbenchError, match="outside the model directory"):
        load_model(crafted)  # without the check, ../good is a sound model and would load


# --- results records ----------------------------------------------------------------------------------------------
def test_record_without_provenance_is_a_validation_error() -> None:
    record = make_record()
    del record["provenance"]
    assert validate_record(record) == ["missing field 'provenance'"]


@pytest.mark.parametrize(("field", "value", "where"), [
    ("memorization", {"members": float("nan"), "nonmembers": 0.0}, "memorization.members"),
    ("roc", {"fpr": [0.0, float("nan"), 1.0], "tpr": [0.0, 0.5, 1.0]}, "roc.fpr[1]"),
    ("rouge_l_ci", [1.0, float("inf")], "rouge_l_ci[1]"),
])
def test_leaderboard_build_refuses_nan_inside_nested_fields(tmp_path: Path, field: str, value: object,
                                                            where: str) -> None:
    results = tmp_path / "results.jsonl"
    lines = [make_record(), {**make_record(seed=1), field: value}]
    results.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")  # json writes bare NaN
    result = CliRunner().invoke(main, ["leaderboard", "build", str(results), "--out", str(tmp_path / "site")])
    flat = " ".join(result.output.split())
    assert result.exit_code == EXIT_USAGE and f"results.jsonl:2: invalid results record: field '{where}' is not a " \
        "finite number" in flat, flat
    assert not (tmp_path / "site" / "results.jsonl").exists()


def test_non_utf8_results_file(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_bytes((json.dumps(make_record(task="caf\u00e9"), ensure_ascii=False) + "\n").encode("latin-1"))
    result = CliRunner().invoke(main, ["leaderboard", "build", str(results), "--out", str(tmp_path / "site")])
    assert result.exit_code == EXIT_USAGE and "results.jsonl: not UTF-8 text" in result.output, result.output


# --- audit outputs ------------------------------------------------------------------------------------------------
def sample_files(tmp_path: Path) -> tuple[Path, Path]:
    members, nonmembers = tmp_path / "members.txt", tmp_path / "nonmembers.txt"
    members.write_text("".join(f"the quick brown fox number {i}\n" for i in range(6)), encoding="utf-8")
    nonmembers.write_text("".join(f"a lazy dog sleeps {i} hours\n" for i in range(6)), encoding="utf-8")
    return members, nonmembers


@pytest.mark.parametrize("target", ["members", "nonmembers", "link-to-members"])
def test_audit_scores_out_onto_an_input_is_refused(saved_model: Path, tmp_path: Path, target: str) -> None:
    members, nonmembers = sample_files(tmp_path)
    (tmp_path / "link-to-members").symlink_to(members)
    before = members.read_bytes(), nonmembers.read_bytes()
    result = CliRunner().invoke(main, ["audit", "--model", str(saved_model), "--members", str(members),
                                       "--nonmembers", str(nonmembers), "--attack", "loss",
                                       "--scores-out", str(tmp_path / f"{target}.txt" if "link" not in target
                                                           else tmp_path / target)])
    flat = " ".join(result.output.split())
    assert result.exit_code == EXIT_USAGE and "would overwrite an input" in flat, flat
    assert (members.read_bytes(), nonmembers.read_bytes()) == before


def test_audit_same_file_as_members_and_nonmembers_warns(saved_model: Path, tmp_path: Path) -> None:
    members, _ = sample_files(tmp_path)
    result = CliRunner().invoke(main, ["audit", "--model", str(saved_model), "--members", str(members),
                                       "--nonmembers", str(members), "--attack", "loss", "--bootstrap", "10"])
    flat = " ".join(result.output.split())
    assert "Warning: --members and --nonmembers are the same file" in flat and "Traceback" not in flat, flat
