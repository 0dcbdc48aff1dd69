"""The house rules of the code base (README "Layout"), checked from the source: imports point one way.

- no import cycle inside ``kdbench/``, counting every import (function-level and type-checking-only ones too: a
  cycle hidden behind them is still a cycle), between modules and between the sub-packages of the data flow;
- built-in plugins import nothing of kdbench but its public API, :mod:`kdbench.api`, exactly as a third-party
  plugin does (so a move inside the core never breaks a plugin);
- only ``kdbench/cli/`` imports ``click`` or ``rich`` (the core reports through a plain Protocol).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "kdbench"
PLUGINS = REPO / "plugins"
PUBLIC = {"kdbench", "kdbench.api"}
# Top-level modules that sit above the sub-packages by design: the public API re-exports them, the testing kit
# and the CLI use everything.
TOP = {"kdbench", "kdbench.api", "kdbench.testing", "kdbench.__main__", "kdbench.hookspecs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """Every module of ``known`` that ``path`` imports anywhere in its body, with the line."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            if target in known:
                yield target, node.lineno


def graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p): p for p in root.rglob("*.py")}
    return {name: {t for t, _ in imported(path, set(files))} - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module not in TOP) else None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check below can fail: a two-module and a three-module cycle are found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": set()}) == [["a", "b"]]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == [["x", "y", "z"]]


def test_no_import_cycle_between_modules() -> None:
    found = cycles(graph(CORE))
    assert not found, "import cycles inside kdbench/: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_between_subpackages() -> None:
    """The sub-packages are the data flow (core → tasks → models → training → scoring → evaluation → defense →
    distill → results → run → analysis → leaderboard → cli): interfaces point one way."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph(CORE).items():
        source = subpackage(module)
        if source is None:
            continue
        packages.setdefault(source, set())
        packages[source] |= {t for t in map(subpackage, targets) if t is not None and t != source}
    found = cycles(packages)
    assert not found, "sub-packages that import each other: " + "; ".join(" <-> ".join(c) for c in found)


def test_core_imports_nothing_else_of_kdbench() -> None:
    bad = [(m, t) for m, targets in graph(CORE).items() if m.startswith("kdbench.core") for t in targets
           if not t.startswith("kdbench.core") and t != "kdbench.hookspecs"]
    assert not bad, f"kdbench.core must stand alone: {bad}"


def test_builtin_plugins_import_only_the_public_api() -> None:
    known = {module_name(p) for p in CORE.rglob("*.py")}
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {target}"
        for path in sorted(PLUGINS.rglob("*.py"))
        for target, line in imported(path, known)
        if target not in PUBLIC
    ]
    assert not offenders, "built-in plugins must import only kdbench.api:\n" + "\n".join(offenders)


@pytest.mark.parametrize("library", ["click", "rich"])
def test_only_the_cli_imports(library: str) -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.is_relative_to(CORE / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == library or n.startswith(library + ".") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"{library} imported outside kdbench/cli/: {offenders}"


def test_every_public_name_resolves_and_is_reachable_from_the_package() -> None:
    import kdbench
    import kdbench.api as api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing, f"kdbench.api.__all__ names what it does not define: {missing}"
    assert kdbench.DistillJob is api.DistillJob  # the lazy re-export on the package
    with pytest.raises(AttributeError):
        kdbench.ScoringHostThatDoesNotExist  # noqa: B018


@pytest.mark.parametrize(("old", "name"), [
    ("kdbench.protocols", "AttackInputs"),
    ("kdbench.params", "check_range"),
    ("kdbench.distill", "DistillJob"),
    ("kdbench.defense", "DefenseBase"),
    ("kdbench.training", "shifted"),
])
def test_old_plugin_import_paths_warn_and_serve_the_public_api(old: str, name: str) -> None:
    """Plugins generated by kdbench 0.1's scaffold imported these paths: they keep working, with a warning."""
    import importlib

    import kdbench.api as api

    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} is deprecated: import it from kdbench.api"):
        value = getattr(module, name)
    assert value is getattr(api, name)
    with pytest.raises(AttributeError):
        module.not_a_name  # noqa: B018
