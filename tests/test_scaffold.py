"""``kdbench plugin new``: the generated packages install with pip, register through their entry point, and
their own tests (on the conformance kit) pass as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.cli.scaffold import PluginNames, ScaffoldError, check_name, new_plugin, render

# kind -> plugin name; the names differ so that all three install side by side in one --target directory.
PLUGINS = {"attack": "foo", "distiller": "foo-distiller", "defense": "foo-defense"}


def kdbench_command() -> list[str]:
    script = Path(sys.executable).with_name("kdbench")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from kdbench.cli import main; main()"]


def subprocess_env(site: Path, cache: Path) -> dict[str, str]:
    """The current environment plus ``site`` on the path; a private cache; one thread (micro models)."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "KDBENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}


def pip_install_target(target: Path, *packages: Path) -> None:
    """Install local packages into ``target`` (never into this environment): no index, no deps, no isolation."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), *map(str, packages)],
        check=True, capture_output=True, text=True,
    )


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# --- names and refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Foo", "1foo", "foo_bar", "foo--bar", "foo-", "-foo", "foo bar", "all",
                                  "kdbench-foo", "x" * 41, ""])
def test_invalid_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError):
        check_name(name)
    code, out = invoke("plugin", "new", "attack", name, "--dir", str(tmp_path))
    assert code == 2, out
    assert "Error:" in out and "Traceback" not in out
    assert not any(tmp_path.iterdir())


def test_existing_target_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "kdbench-foo").mkdir()
    (tmp_path / "kdbench-foo" / "keep.txt").write_text("mine")
    code, out = invoke("plugin", "new", "attack", "foo", "--dir", str(tmp_path))
    assert code == 2
    assert "already exists" in out and "Traceback" not in out
    assert (tmp_path / "kdbench-foo" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["kdbench-foo"]  # no staging directory left behind


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    code, out = invoke("plugin", "new", "attacker", "foo", "--dir", str(tmp_path))
    assert code == 2 and "attacker" in out
    with pytest.raises(ScaffoldError, match="attacker"):
        new_plugin("attacker", "foo", tmp_path)


def test_names_are_derived_from_the_plugin_name() -> None:
    names = PluginNames.of("attack", "my-tokens")
    assert (names.distribution, names.package) == ("kdbench-my-tokens", "kdbench_my_tokens")
    assert names.cls == "MyTokensAttack"
    assert PluginNames.of("defense", "foo-defense").cls == "FooDefense"


@pytest.mark.parametrize("kind", sorted(PLUGINS))
def test_rendered_package_layout(kind: str) -> None:
    files = render(kind, "my-thing")
    assert set(files) == {"pyproject.toml", "README.md", "src/kdbench_my_thing/__init__.py",
                          "tests/test_kdbench_my_thing.py"}
    pyproject = files["pyproject.toml"]
    assert 'name = "kdbench-my-thing"' in pyproject
    assert '[project.entry-points.kdbench]\nmy-thing = "kdbench_my_thing"' in pyproject
    assert 'addopts = "-p kdbench.testing"' in pyproject
    assert f"def register_{kind}s(register: Register)" in files["src/kdbench_my_thing/__init__.py"]
    assert "kdbench.testing" in files["tests/test_kdbench_my_thing.py"]
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")  # valid Python as generated


def test_cli_prints_next_steps(tmp_path: Path) -> None:
    code, out = invoke("plugin", "new", "defense", "bar", "--dir", str(tmp_path))
    assert code == 0, out
    assert "kdbench-bar" in out and "pip install -e" in out and "pytest" in out
    assert (tmp_path / "kdbench-bar" / "src" / "kdbench_bar" / "__init__.py").exists()


# --- generated, installed, listed, tested ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three templates generated with the CLI and pip-installed into one --target directory."""
    root = tmp_path_factory.mktemp("scaffold")
    for kind, name in PLUGINS.items():
        code, out = invoke("plugin", "new", kind, name, "--dir", str(root))
        assert code == 0, out
    pip_install_target(root / "site", *(root / f"kdbench-{name}" for name in PLUGINS.values()))
    return root


def test_generated_plugins_are_listed_with_their_distribution(installed: Path) -> None:
    proc = subprocess.run([*kdbench_command(), "list", "--json"], capture_output=True, text=True,
                          env=subprocess_env(installed / "site", installed / "cache"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    for kind, name in PLUGINS.items():
        rows = {row["name"]: row for row in listing[f"{kind}s"]}
        assert name in rows, f"{name} missing from `kdbench list {kind}s`"
        assert rows[name]["distribution"] == f"kdbench-{name}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PLUGINS))
def test_generated_tests_pass(installed: Path, kind: str) -> None:
    """The package's own tests, run the way its author runs them: `pytest` in its directory."""
    package = installed / f"kdbench-{PLUGINS[kind]}"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                          capture_output=True, text=True, env=subprocess_env(installed / "site", installed / "cache"),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout
