"""The plugin loader: entry points, registration, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.core.errors import ParameterError, PluginError, UnknownNameError
from kdbench.core.params import PluginSpec, build_params, parse_specs
from kdbench.core.registry import build_registry
from tests.helpers import make_distribution

ATTACK = """
    from dataclasses import dataclass
    import numpy as np
    from kdbench import hookimpl

    @dataclass(frozen=True)
    class Params:
        scale: float = 1.0

    class Echo:
        name = "{name}"
        description = "Test attack."
        Params = Params
        needs = frozenset({{"token_stats"}})
        def __init__(self, params): self.params = params
        def score(self, inputs):
            return np.array([lp.mean() * self.params.scale for lp in inputs.token_stats.per_sample("logprob")])

    @hookimpl
    def register_attacks(register):
        register(Echo)
"""


def test_builtins_are_registered_through_entry_points() -> None:
    registry = build_registry()
    assert {"kd"} <= set(registry.names("distillers"))
    assert {"loss", "mink"} <= set(registry.names("attacks"))
    assert "none" in registry.names("defenses")
    info = registry.get("attacks", "mink")
    assert info.distribution == "kdbench"
    assert info.entry_point == "mink"
    assert info.cls.__module__ == "kdbench_plugins.attacks.mink"


def test_third_party_distribution_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(tmp_path, "kdbench-echo", "kdbench_echo", ATTACK.format(name="echo"),
                      {"echo": "kdbench_echo"})
    monkeypatch.syspath_prepend(str(tmp_path))
    info = build_registry().get("attacks", "echo")
    assert (info.distribution, info.version, info.description) == ("kdbench-echo", "1.0", "Test attack.")


def test_broken_plugin_names_entry_point_distribution_and_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_distribution(tmp_path, "kdbench-broken", "kdbench_broken", "import not_a_module_anywhere\n",
                      {"broken": "kdbench_broken"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        build_registry()
    message = str(info.value)
    assert "'broken'" in message and "kdbench-broken" in message and "not_a_module_anywhere" in message


def test_name_registered_twice_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(tmp_path, "kdbench-dup", "kdbench_dup", ATTACK.format(name="loss"), {"dup": "kdbench_dup"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="registered twice"):
        build_registry()


def test_class_missing_a_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ATTACK.format(name="noscore").replace("def score", "def not_score")
    make_distribution(tmp_path, "kdbench-noscore", "kdbench_noscore", source, {"noscore": "kdbench_noscore"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="lacks: score"):
        build_registry()


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_registry().get("attacks", "minkk")
    message = str(info.value)
    assert "Did you mean 'mink'" in message and "Available:" in message and "loss" in message


def test_parse_specs_lists_and_parameters() -> None:
    specs = parse_specs(("kd,gkd:lmbda=0.5,beta=0.5", "mink:k=0.1"))
    assert specs == [
        PluginSpec("kd"),
        PluginSpec("gkd", (("lmbda", "0.5"), ("beta", "0.5"))),
        PluginSpec("mink", (("k", "0.1"),)),
    ]
    assert str(specs[1]) == "gkd:lmbda=0.5,beta=0.5"
    with pytest.raises(ParameterError):
        parse_specs("k=0.1")


def test_build_params_coerces_and_validates() -> None:
    from kdbench_plugins.attacks.mink import MinKParams

    assert build_params(MinKParams, (("k", "0.1"), ("use_probs", "true")), "mink") == MinKParams(0.1, True)
    with pytest.raises(ParameterError, match="Did you mean 'k'"):
        build_params(MinKParams, (("kk", "0.1"),), "mink")
    with pytest.raises(ParameterError, match="outside"):
        build_params(MinKParams, (("k", "1.5"),), "mink")
    with pytest.raises(ParameterError, match="expected float"):
        build_params(MinKParams, (("k", "lots"),), "mink")
