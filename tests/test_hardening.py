"""Bad values are refused before any artifact is built, with a message and exit status 2 (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.core.errors import EXIT_USAGE, ParameterError, PluginError, TaskError
from kdbench.core.params import build_params, check_range
from kdbench.core.registry import build_registry
from kdbench.tasks.manifest import load_task
from tests.helpers import make_distribution
from tests.test_plugins import ATTACK

TINY = (Path(__file__).parent / "fixtures" / "tiny-task.yaml").read_text(encoding="utf-8")


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
