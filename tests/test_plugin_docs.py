"""docs/plugins.md documents every hook, Protocol member and defense stage, found by introspection, so the doc
cannot silently fall behind the code."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from kdbench import api, hookspecs
from kdbench.defense import base as defense

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The text under the first markdown heading containing ``heading``, up to the next heading of its level."""
    lines = doc().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(#+)\s", line)
        if match and heading in line:
            level = len(match.group(1))
            end = next(
                (j for j in range(i + 1, len(lines)) if re.match(rf"#{{1,{level}}}\s", lines[j])), len(lines)
            )
            return "\n".join(lines[i:end])
    raise AssertionError(f"docs/plugins.md has no heading containing {heading!r}")


def hook_signatures() -> list[str]:
    """``register_attacks(register: Register) -> None`` for every hookspec, as written in the source."""
    out = []
    for name, function in vars(hookspecs).items():
        if not callable(function) or not hasattr(function, "kdbench_spec"):
            continue
        signature = inspect.signature(function)
        params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
        out.append(f"{name}({params}) -> {signature.return_annotation}")
    return out


def protocol_members() -> dict[str, list[str]]:
    """Each Protocol of the public API (kdbench.api) and the members it declares itself (inherited ones under its
    base)."""
    out = {}
    for name in api.__all__:
        cls = getattr(api, name)
        is_protocol = isinstance(cls, type) and getattr(cls, "_is_protocol", False)
        if not is_protocol or not cls.__module__.startswith("kdbench."):
            continue
        members = list(inspect.get_annotations(cls))
        members += [m for m, v in vars(cls).items() if _declared_method(cls, m, v)]
        out[name] = members
    return out


def _declared_method(cls: type, name: str, value: object) -> bool:
    """A method written in the class body (not one typing generates, such as a Protocol's ``__init__``)."""
    written_here = inspect.isfunction(value) and value.__qualname__ == f"{cls.__qualname__}.{name}"
    return written_here and (not name.startswith("_") or name == "__init__")


def test_introspection_finds_the_api() -> None:
    assert len(hook_signatures()) == 3
    assert {"Plugin", "Attack", "Distiller", "Defense"} <= set(protocol_members())
    assert "score" in protocol_members()["Attack"]


@pytest.mark.parametrize("signature", hook_signatures())
def test_every_hook_is_documented_with_its_exact_signature(signature: str) -> None:
    assert f"`{signature}`" in section("## Hooks"), f"docs/plugins.md: document the hook `{signature}`"
    assert re.search(rf"^###\s+`{re.escape(signature)}`", doc(), re.M), f"give `{signature}` its own ### heading"


@pytest.mark.parametrize("protocol", sorted(protocol_members()))
def test_every_protocol_member_is_documented(protocol: str) -> None:
    text = section(f"Protocol `{protocol}`")
    missing = [m for m in protocol_members()[protocol] if not re.search(rf"`{re.escape(m)}\b", text)]
    assert not missing, f"docs/plugins.md, section Protocol `{protocol}`: document {', '.join(missing)}"


def test_attack_inputs_and_needs_are_documented() -> None:
    text = section("Protocol `Attack`")
    fields = [f.name for f in dataclasses.fields(api.AttackInputs)]
    needs = [n for n in vars(api.Need) if not n.startswith("_")]
    missing = [m for m in fields + needs if f"`{m}`" not in text]
    assert not missing, f"docs/plugins.md, section Protocol `Attack`: document {', '.join(missing)}"


def test_every_defense_stage_and_hook_is_documented() -> None:
    text = section("## Defense stages")
    hooks = [m for m, v in vars(defense.DefenseBase).items() if inspect.isfunction(v) and not m.startswith("_")]
    missing = [s for s in defense.STAGES if f"`{s}`" not in text]
    missing += [h for h in hooks if not re.search(rf"`{re.escape(h)}\(", text)]
    assert not missing, f"docs/plugins.md, section Defense stages: document {', '.join(missing)}"


def test_each_stage_hook_names_its_stage_in_its_docstring() -> None:
    """The stage ↔ method mapping the doc's table shows is the one DefenseBase's docstrings state."""
    hooks = {m: v for m, v in vars(defense.DefenseBase).items() if inspect.isfunction(v) and not m.startswith("_")}
    stated = {(v.__doc__ or "").split(":")[0].strip("`") : m for m, v in hooks.items()}
    assert set(stated) == set(defense.STAGES)
    text = section("## Defense stages")
    for stage, method in stated.items():
        assert re.search(rf"\|\s*`{stage}`\s*\|\s*`{method}\(", text), f"table row for {stage} → {method}"


def test_discovery_lifecycle_and_errors_are_covered() -> None:
    for heading in ("## Discovery", "## The lifecycle of a cell", "## Parameters", "## When a plugin breaks"):
        assert section(heading)
    assert "gkd:lmbda=0.5,beta=0.5" in section("## Parameters")
    assert "Could not load plugin entry point" in section("## When a plugin breaks")


def test_defense_lifecycle_and_context_are_documented() -> None:
    lifecycle = getattr(defense, "DefenseLifecycle", None)
    context = getattr(defense, "DefenseContext", None)
    if lifecycle is None or context is None:
        pytest.skip("this kdbench has no defense lifecycle")
    members = list(inspect.get_annotations(lifecycle))
    members += [m for m, v in vars(lifecycle).items()
                if not m.startswith("_") and (inspect.isfunction(v) or isinstance(v, classmethod))]
    members += [f.name for f in dataclasses.fields(context)]
    text = section("### Lifecycle methods")
    missing = [m for m in dict.fromkeys(members) if f"`{m}" not in text]
    assert not missing, f"docs/plugins.md, section Lifecycle methods: document {', '.join(missing)}"
