"""``kdbench plugin new``: generate a pip-installable plugin package that works and passes its tests at once.

The package ``kdbench-NAME`` has a pyproject with the ``kdbench`` entry point, an import package ``kdbench_NAME``
(hyphens become underscores) with a minimal working implementation of the kind, a README, and tests that use the
conformance kit :mod:`kdbench.testing`. The templates are plain :class:`string.Template` strings kept here, so the
scaffold needs no package data.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from string import Template

from kdbench.core.errors import KdbenchError

KINDS = ("distiller", "attack", "defense")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME_LENGTH = 40
RESERVED_NAMES = frozenset({"all"})  # `--attack all` means every installed attack


class ScaffoldError(KdbenchError):
    """The plugin cannot be generated as asked (bad kind or name, or the target exists)."""


@dataclass(frozen=True)
class PluginNames:
    """Every name the generated package uses, derived from the plugin name."""

    kind: str
    name: str  # the registered name, as on the command line: --attack NAME
    distribution: str  # kdbench-NAME
    package: str  # kdbench_NAME
    cls: str  # CamelCase + kind, e.g. MyTokensAttack

    @classmethod
    def of(cls, kind: str, name: str) -> PluginNames:
        check_kind(kind)
        check_name(name)
        camel = "".join(part.capitalize() for part in name.split("-"))
        suffix = "" if camel.endswith(kind.capitalize()) else kind.capitalize()
        return cls(kind, name, f"kdbench-{name}", "kdbench_" + name.replace("-", "_"), camel + suffix)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ScaffoldError(f"Unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}.")


def check_name(name: str) -> None:
    """Refuse names that would not work as a CLI spec, a distribution or an import package."""
    rule = "Use lowercase letters, digits and single hyphens, starting with a letter (e.g. 'my-attack')."
    if not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(f"Invalid plugin name {name!r}. {rule}")
    if len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"Plugin name {name!r} is longer than {MAX_NAME_LENGTH} characters.")
    if name in RESERVED_NAMES:
        raise ScaffoldError(f"Plugin name {name!r} is reserved (`--attack all` selects every attack).")
    if name == "kdbench" or name.startswith("kdbench-"):
        raise ScaffoldError(f"Plugin name {name!r}: leave out the 'kdbench-' prefix; it is added to the package name.")


def render(kind: str, name: str) -> dict[str, str]:
    """The generated files: relative path -> content."""
    names = PluginNames.of(kind, name)
    values = {
        "kind": names.kind,
        "name": names.name,
        "distribution": names.distribution,
        "package": names.package,
        "cls": names.cls,
        "hook": f"register_{kind}s",
        "summary": SUMMARIES[kind],
        "usage": Template(USAGE[kind]).substitute(name=name),
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{names.package}/__init__.py": MODULES[kind],
        f"tests/test_{names.package}.py": TESTS[kind],
    }
    return {path: Template(text).substitute(values) for path, text in files.items()}


def new_plugin(kind: str, name: str, directory: Path | str = ".") -> Path:
    """Write ``kdbench-NAME/`` under ``directory`` and return its path; never overwrites anything."""
    files = render(kind, name)
    parent = Path(directory)
    target = parent / f"kdbench-{name}"
    if target.exists():
        raise ScaffoldError(f"{target} already exists; choose another --dir or name, or remove it first.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".kdbench-{name}-", dir=parent))
    except OSError as exc:
        raise ScaffoldError(f"Cannot write under {parent} ({exc.strerror or exc}); choose another --dir.") from exc
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.replace(staging, target)  # all or nothing: no half-written package is left behind
    except OSError as exc:
        raise ScaffoldError(f"Cannot write {target} ({exc.strerror or exc}).") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --- templates ---------------------------------------------------------------------------------------------------

SUMMARIES = {
    "attack": "A membership-inference attack for kdbench",
    "distiller": "A knowledge-distillation technique for kdbench",
    "defense": "A distillation defense for kdbench",
}

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "$summary: $name."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["kdbench"]

[project.optional-dependencies]
test = ["pytest>=8"]

# kdbench discovers plugins through this entry-point group: the module named here implements $hook.
[project.entry-points.kdbench]
$name = "$package"

[tool.pytest.ini_options]
testpaths = ["tests"]
# The conformance kit's fixtures (kdbench_world, kdbench_attack_inputs, kdbench_distill_job, ...) are opt-in.
addopts = "-p kdbench.testing"
"""

README = """\
# $distribution

$summary: the $kind `$name`.

## Install

```bash
pip install -e .          # registers the entry point; `kdbench list ${kind}s` now shows `$name`
```

## Use

```bash
kdbench list ${kind}s
$usage
```

## Develop

Edit `src/$package/__init__.py`; keep the class's `name`, `description` and `Params` (a dataclass whose
fields all have defaults: they are the parameters, set on the command line as `$name:key=value`).

```bash
pip install -e '.[test]'
pytest                    # runs kdbench's conformance checks (kdbench.testing) on the $kind
```

The hooks, Protocols, defense stages and the lifecycle of a run are documented in kdbench's `docs/plugins.md`.
"""

USAGE = {
    "attack": "kdbench run --distiller kd --attack loss,$name",
    "distiller": "kdbench run --distiller kd,$name --attack loss",
    "defense": "kdbench run --distiller kd --attack loss --defense none --defense $name",
}

ATTACK_MODULE = '''\
"""``$name``: mean log-probability of the response tokens, after dropping the ``trim`` fraction of the
least likely ones. A starting point: replace ``score`` with your attack, keeping higher = more likely member."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from kdbench.api import AttackInputs, Need, Register, check_range, hookimpl


@dataclass(frozen=True)
class ${cls}Params:
    """Set on the command line as ``--attack $name:trim=0.1``."""

    trim: float = 0.0  # fraction of the lowest token log-probs to ignore

    def __post_init__(self) -> None:
        check_range("$name", "trim", self.trim, 0.0, 0.9)


class $cls:
    name = "$name"
    description = "Mean response-token log-probability, lowest tokens trimmed (higher = more likely member)."
    Params = ${cls}Params
    needs = frozenset({Need.TOKEN_STATS})  # the runner computes per-token statistics once and shares them

    def __init__(self, params: ${cls}Params) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        """One score per sample, in the order of ``inputs.samples``; higher = more likely a member."""
        assert inputs.token_stats is not None
        return np.array([self._score(lp) for lp in inputs.token_stats.per_sample("logprob")])

    def _score(self, logprobs: np.ndarray) -> float:
        kept = np.sort(logprobs)[int(len(logprobs) * self.params.trim) :]
        return float(kept.mean()) if len(kept) else 0.0


@hookimpl
def register_attacks(register: Register) -> None:
    register($cls)
'''

DISTILLER_MODULE = '''\
"""``$name``: temperature-scaled forward-KL distillation (Hinton et al., 2015) on the distillation set's
ground-truth responses. A starting point: replace the loss with your technique."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from kdbench.api import DistillJob, Register, check_range, hookimpl, shifted


@dataclass(frozen=True)
class ${cls}Params:
    """Set on the command line as ``--distiller $name:temperature=4,lr=1e-4``."""

    temperature: float = 2.0
    lr: float | None = None  # None: the task's student learning rate
    epochs: int | None = None  # None: the task's student epochs

    def __post_init__(self) -> None:
        check_range("$name", "temperature", self.temperature, 1e-3)


class $cls:
    name = "$name"
    description = "Temperature-scaled forward-KL distillation on ground-truth responses."
    Params = ${cls}Params

    def __init__(self, params: ${cls}Params) -> None:
        self.params = params

    def distill(self, job: DistillJob) -> Any:
        """Train ``job.student`` through the shared loop (defenses are wired into it) and return it."""
        t = self.params.temperature

        def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            student = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            teacher = job.teacher_logits(batch)[:, :-1]
            _, mask = shifted(batch)  # response tokens only
            p = torch.softmax(teacher.float() / t, dim=-1)
            per_token = -(p * torch.log_softmax(student.float() / t, dim=-1)).sum(-1) * t * t
            return (per_token * mask).sum() / mask.sum().clamp(min=1)

        job.train(loss, job.with_overrides(self.params.lr, self.params.epochs))
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register($cls)
'''

DEFENSE_MODULE = '''\
"""``$name``: soften the teacher's next-token distribution (divide its logits by ``temperature``) before the
student sees it. A starting point: override the hooks of the stages your defense needs and list them in
``stages``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kdbench.api import DefenseBase, Register, check_range, hookimpl


@dataclass(frozen=True)
class ${cls}Params:
    """Set on the command line as ``--defense $name:temperature=4``."""

    temperature: float = 2.0

    def __post_init__(self) -> None:
        check_range("$name", "temperature", self.temperature, 1e-3)


class $cls(DefenseBase):
    name = "$name"
    description = "Soften the teacher's outputs with a temperature before distillation."
    Params = ${cls}Params
    stages = frozenset({"teacher_outputs"})  # the runner calls only the hooks of these stages

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.params.temperature


@hookimpl
def register_defenses(register: Register) -> None:
    register($cls)
'''

ATTACK_TEST = '''\
"""Tests for the ``$name`` attack, with kdbench's conformance kit (fixtures via ``-p kdbench.testing``)."""

from kdbench.testing import check_attack, check_registered

from $package import $cls


def test_entry_point_registers_it() -> None:
    info = check_registered("attack", "$name")
    assert info.cls is $cls
    assert info.distribution == "$distribution"


def test_contract() -> None:
    check_attack($cls)  # registration, parameters, scoring, orientation, determinism
    check_attack($cls, $cls.Params(trim=0.2))


def test_one_score_per_sample(kdbench_attack_inputs) -> None:
    inputs, labels = kdbench_attack_inputs
    scores = $cls($cls.Params()).score(inputs)
    assert scores.shape == labels.shape
'''

DISTILLER_TEST = '''\
"""Tests for the ``$name`` distiller, with kdbench's conformance kit (fixtures via ``-p kdbench.testing``)."""

from kdbench.testing import check_distiller, check_registered

from $package import $cls


def test_entry_point_registers_it() -> None:
    info = check_registered("distiller", "$name")
    assert info.cls is $cls
    assert info.distribution == "$distribution"


def test_contract() -> None:
    check_distiller($cls)  # registration, parameters, trains the given student, determinism


def test_returns_the_trained_student(kdbench_distill_job) -> None:
    student = $cls($cls.Params(temperature=1.0)).distill(kdbench_distill_job)
    assert student is kdbench_distill_job.student
'''

DEFENSE_TEST = '''\
"""Tests for the ``$name`` defense, with kdbench's conformance kit (fixtures via ``-p kdbench.testing``)."""

import torch
from kdbench.testing import check_defense, check_registered

from $package import $cls


def test_entry_point_registers_it() -> None:
    info = check_registered("defense", "$name")
    assert info.cls is $cls
    assert info.distribution == "$distribution"


def test_contract() -> None:
    check_defense($cls)  # registration, parameters, acts only at its declared stages, determinism


def test_softens_the_teacher(kdbench_world) -> None:
    logits = torch.randn(2, 3, len(kdbench_world.tokenizer), generator=torch.Generator().manual_seed(0))
    softened = $cls($cls.Params(temperature=4.0)).transform_teacher_logits(logits)

    def entropy(x: torch.Tensor) -> torch.Tensor:
        return -(torch.softmax(x, -1) * torch.log_softmax(x, -1)).sum(-1)

    assert torch.all(entropy(softened) > entropy(logits))
'''

MODULES = {"attack": ATTACK_MODULE, "distiller": DISTILLER_MODULE, "defense": DEFENSE_MODULE}
TESTS = {"attack": ATTACK_TEST, "distiller": DISTILLER_TEST, "defense": DEFENSE_TEST}
