"""The spine requirement: a third-party package, installed with pip, registered through its own entry point, is
listed and used by `kdbench run` exactly like a built-in; a broken one fails `kdbench list` cleanly."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.test_scaffold import kdbench_command, pip_install_target, subprocess_env

TINY_TASK = Path(__file__).parent / "fixtures" / "tiny-task.yaml"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "2.3.4"
dependencies = ["kdbench"]

[project.entry-points.kdbench]
{entry_point} = "{module}"
"""

MEANPROB = '''\
"""``meanprob``: the mean probability (not log-probability) of the response tokens."""

import numpy as np

from kdbench import hookimpl
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import Need
from kdbench.core.plugin import NoParams


class MeanProb:
    name = "meanprob"
    description = "Mean response-token probability (a third-party test plugin)."
    Params = NoParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params):
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return np.array([float(np.exp(lp).mean()) for lp in inputs.token_stats.per_sample("logprob")])


@hookimpl
def register_attacks(register):
    register(MeanProb)
'''

BROKEN = '''\
"""A plugin whose import fails, as when a dependency is missing."""

raise ImportError("kdbench_broken needs the package 'not_installed_anywhere'")
'''


def write_package(root: Path, dist: str, module: str, entry_point: str, source: str) -> Path:
    """A minimal src-layout distribution with one ``kdbench`` entry point."""
    package = root / dist
    (package / "src" / module).mkdir(parents=True)
    (package / "src" / module / "__init__.py").write_text(textwrap.dedent(source))
    (package / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, module=module, entry_point=entry_point))
    return package


@pytest.fixture(scope="module")
def good_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("third-party")
    pip_install_target(root / "site", write_package(root, "kdbench-meanprob", "kdbench_meanprob", "meanprob", MEANPROB))
    return root / "site"


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    pip_install_target(root / "site", write_package(root, "kdbench-broken", "kdbench_broken", "broken", BROKEN))
    return root / "site"


def run_kdbench(site: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kdbench_command(), *args], capture_output=True, text=True,
                          env=subprocess_env(site, cache), timeout=600)


def test_list_shows_the_third_party_attack(good_site: Path, tmp_path: Path) -> None:
    proc = run_kdbench(good_site, tmp_path / "cache", "list", "attacks", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["meanprob"]["distribution"] == "kdbench-meanprob"
    assert rows["meanprob"]["version"] == "2.3.4"
    assert rows["loss"]["distribution"] == "kdbench"  # the built-ins are still there, found the same way


@pytest.mark.slow
def test_run_uses_the_third_party_attack(good_site: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_kdbench(good_site, cache_dir, "run", "--task", str(TINY_TASK), "--distiller", "kd",
                       "--attack", "meanprob", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["attack"] == "meanprob"]
    assert sorted(r["target"] for r in mine) == ["baseline", "student", "teacher"]
    assert all(0.0 <= r["auc"] <= 1.0 for r in mine)


def test_broken_plugin_fails_list_with_one_clean_paragraph(broken_site: Path, tmp_path: Path) -> None:
    proc = run_kdbench(broken_site, tmp_path / "cache", "list")
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "'broken'" in message, message  # the entry point
    assert "kdbench-broken" in message, message  # its distribution
    assert "ImportError" in message and "not_installed_anywhere" in message, message  # the original error
    assert "\n\n" not in message, message  # one paragraph
