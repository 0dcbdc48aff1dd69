"""The conformance kit passes the built-in plugins and fails deliberately broken ones, naming the check and why."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from kdbench_plugins.attacks.loss import LossAttack
from kdbench_plugins.attacks.mink import MinK
from kdbench_plugins.defenses.none import NoDefense
from kdbench_plugins.distillers.kd import KD

from kdbench.core.plugin import NoParams
from kdbench.defense.base import DefenseBase
from kdbench.distill.job import DistillJob
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import Need
from kdbench.tasks.manifest import load_task
from kdbench.testing import (
    TINY_TASK_YAML,
    ContractError,
    check_attack,
    check_defense,
    check_distiller,
    check_registered,
    tiny_world,
)

TINY_TASK_FIXTURE = Path(__file__).parent / "fixtures" / "tiny-task.yaml"

# --- the built-ins pass ------------------------------------------------------------------------------------------


def test_builtin_attacks_pass() -> None:
    check_attack(LossAttack)
    check_attack(MinK)
    check_attack(MinK, MinK.Params(k=0.5, use_probs=True))


def test_builtin_distiller_passes() -> None:
    check_distiller(KD)


def test_builtin_defense_passes() -> None:
    check_defense(NoDefense)


def test_registered_builtins_load() -> None:
    info = check_registered("attack", "loss")
    assert info.cls is LossAttack and info.distribution == "kdbench"
    assert check_registered("distillers", "kd").cls is KD


def test_unregistered_name_fails() -> None:
    with pytest.raises(ContractError, match=r"^check_registered: Unknown attack 'losss'\. Did you mean 'loss'"):
        check_registered("attack", "losss")


def test_contract_error_is_an_assertion_error() -> None:
    assert issubclass(ContractError, AssertionError)


def test_tiny_task_manifest_loads_and_matches_the_repository_fixture(tmp_path: Path) -> None:
    """The manifest the kdbench_tiny_task fixture writes is the one kdbench's own end-to-end tests use."""
    path = tmp_path / "tiny-task.yaml"
    path.write_text(TINY_TASK_YAML, encoding="utf-8")
    task = load_task(str(path))
    assert task.models.teacher == "builtin:gpt2-micro"
    ours, theirs = yaml.safe_load(TINY_TASK_YAML), yaml.safe_load(TINY_TASK_FIXTURE.read_text(encoding="utf-8"))
    assert {k: v for k, v in ours.items() if k != "description"} == {
        k: v for k, v in theirs.items() if k != "description"
    }


def test_world_teacher_memorised_its_members() -> None:
    world = tiny_world()
    inputs, labels = world.attack_inputs()
    scores = LossAttack(NoParams()).score(inputs)
    assert scores[labels == 1].min() > scores[labels == 0].mean()


# --- broken attacks ----------------------------------------------------------------------------------------------


def _mean_logprob(inputs: AttackInputs) -> np.ndarray:
    assert inputs.token_stats is not None
    return np.array([lp.mean() for lp in inputs.token_stats.per_sample("logprob")])


class _Attack:
    name = "broken"
    description = "A deliberately broken attack."
    Params: type = NoParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: Any) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return _mean_logprob(inputs)


class WrongWay(_Attack):
    def score(self, inputs: AttackInputs) -> np.ndarray:
        return -_mean_logprob(inputs)  # the loss itself: members LOWER


class Noisy(_Attack):
    def score(self, inputs: AttackInputs) -> np.ndarray:
        return _mean_logprob(inputs) + np.random.default_rng().normal(0, 1e-6, len(inputs.samples))


class NoScore:
    name = "noscore"
    description = "Forgot score()."
    Params = NoParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: Any) -> None:
        self.params = params


@dataclasses.dataclass(frozen=True)
class NoDefaultParams:
    k: float


class NoDefaults(_Attack):
    Params = NoDefaultParams


@dataclasses.dataclass(frozen=True)
class ListParams:
    ks: tuple[float, ...] = (0.1, 0.2)


class CliUnsettable(_Attack):
    Params = ListParams


class ForgetsParams(_Attack):
    def __init__(self, params: Any) -> None:
        self.config = params


class ShortScores(_Attack):
    def score(self, inputs: AttackInputs) -> np.ndarray:
        return _mean_logprob(inputs)[:-1]


class NaNScores(_Attack):
    def score(self, inputs: AttackInputs) -> np.ndarray:
        scores = _mean_logprob(inputs)
        scores[0] = np.nan
        return scores


class UndeclaredNeed(_Attack):
    needs = frozenset[str]()


class UnknownNeed(_Attack):
    needs = frozenset({"telepathy"})


class BadName(_Attack):
    name = "two:parts"


class ReferenceCalibrated(_Attack):
    """Needs another model: the kit serves it through kdbench.scoring.context, as a run does."""

    needs = frozenset({Need.REFERENCE_MODEL})

    def score(self, inputs: AttackInputs) -> np.ndarray:
        assert inputs.scoring is not None
        return inputs.scoring.mean_logprob() - inputs.scoring.reference_logprob("public")


def test_attack_with_other_needs_is_served_by_the_kit() -> None:
    check_attack(ReferenceCalibrated)


@pytest.mark.parametrize(
    ("cls", "check", "reason"),
    [
        (WrongWay, "orientation", r"WrongWay scores non-members higher \(AUC 0\.\d\d <= 0\.5.*return higher scores"),
        (Noisy, "determinism", r"Noisy gives different scores for the same inputs"),
        (NoScore, "registration", r"NoScore lacks score"),
        (NoDefaults, "parameters", r"field 'k' has no default"),
        (CliUnsettable, "parameters", r"parameter 'ks' .* cannot be set from the command line"),
        (ForgetsParams, "parameters", r"does not keep its parameters as `self\.params`"),
        (ShortScores, "scoring", r"returned shape \(47,\) for 48 samples"),
        (NaNScores, "scoring", r"1 non-finite scores"),
        (UndeclaredNeed, "scoring", r"declare needs = frozenset\(\{Need\.TOKEN_STATS\}\)"),
        (UnknownNeed, "registration", r"needs is frozenset\(\{'telepathy'\}\)"),
        (BadName, "registration", r"name is 'two:parts'"),
    ],
)
def test_broken_attack_fails_with_check_and_reason(cls: type, check: str, reason: str) -> None:
    with pytest.raises(ContractError, match=rf"^check_attack\[{check}\]: (?s:.*){reason}"):
        check_attack(cls)


# --- broken distillers -------------------------------------------------------------------------------------------


class _Distiller:
    name = "broken-distiller"
    description = "A deliberately broken distiller."
    Params = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    def distill(self, job: DistillJob) -> Any:
        job.train(_sft, job.config)
        return job.student


def _sft(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from kdbench.training.loop import sft_loss

    return sft_loss(model, batch)


class Lazy(_Distiller):
    def distill(self, job: DistillJob) -> Any:
        return job.student


class FreshModel(_Distiller):
    def distill(self, job: DistillJob) -> Any:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=job.student.config.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2)
        return GPT2LMHeadModel(config)


class Jittery(_Distiller):
    def distill(self, job: DistillJob) -> Any:
        student = super().distill(job)
        with torch.no_grad():  # noise from the OS, not from the job's seed
            student.lm_head.weight[0, 0] += float(np.random.default_rng().normal())
        return student


class TrainsTheTeacher(_Distiller):
    def distill(self, job: DistillJob) -> Any:
        with torch.no_grad():
            job.teacher.lm_head.weight.mul_(0.5)
        return super().distill(job)


@pytest.mark.parametrize(
    ("cls", "check", "reason"),
    [
        (Lazy, "training", r"returned the student with its initial weights"),
        (FreshModel, "architecture", r"differ in names or shapes from the student"),
        (Jittery, "determinism", r"trains different weights from the same seed"),
        (TrainsTheTeacher, "teacher", r"changed the teacher's weights"),
    ],
)
def test_broken_distiller_fails_with_check_and_reason(cls: type, check: str, reason: str) -> None:
    with pytest.raises(ContractError, match=rf"^check_distiller\[{check}\]: (?s:.*){reason}"):
        check_distiller(cls)


def test_distiller_missing_distill_fails() -> None:
    class NoDistill:
        name, description, Params = "nodistill", "Forgot distill().", NoParams

    with pytest.raises(ContractError, match=r"^check_distiller\[registration\]: .*lacks distill"):
        check_distiller(NoDistill)


# --- defenses ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TemperatureParams:
    temperature: float = 2.0


class Temperature(DefenseBase):
    name = "temperature"
    description = "Soften the teacher's logits."
    Params = TemperatureParams
    stages = frozenset({"teacher_outputs"})

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.params.temperature


class Undeclared(Temperature):
    stages = frozenset[str]()


class UnknownStage(DefenseBase):
    name, description = "unknown-stage", "Declares a stage kdbench does not have."
    stages = frozenset({"teacher_output"})


class DeclaredNotImplemented(DefenseBase):
    name, description = "lazy-defense", "Declares data but does not override select_data."
    stages = frozenset({"data"})


class NoisyLogits(Temperature):
    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + float(np.random.default_rng().normal())


class EmptiesTheData(DefenseBase):
    name, description = "empties", "Drops every example."
    stages = frozenset({"data"})

    def select_data(self, examples: Any) -> list[Any]:
        return []


class StatelessNoOp(DefenseBase):
    """Overrides a hook of an undeclared stage with something equivalent to DefenseBase's: allowed."""

    name, description = "noop", "Calls the base hook."

    def modify_student(self, model: Any) -> Any:
        return super().modify_student(model)


class TwoStudents(DefenseBase):
    """Reads its context, trains two students on halves and keeps the first: the whole lifecycle."""

    name, description = "two-students", "Trains two students and keeps the first."
    stages = frozenset({"postprocess"})

    def shards(self, examples: list[Any]) -> list[list[Any]]:
        assert self.context is not None and self.context.members
        return [examples[::2], examples[1::2]]

    def postprocess(self, students: Any) -> Any:
        return students[0]


class ShardsWithoutPostprocess(TwoStudents):
    stages = frozenset[str]()


def test_a_working_defense_passes() -> None:
    check_defense(Temperature)
    check_defense(StatelessNoOp)
    check_defense(TwoStudents)


@pytest.mark.parametrize(
    ("cls", "check", "reason"),
    [
        (Undeclared, "stages", r"overrides transform_teacher_logits\(\) but does not declare stage 'teacher_outputs'"),
        (UnknownStage, "stages", r"Unknown stage 'teacher_output'\. Did you mean 'teacher_outputs'"),
        (DeclaredNotImplemented, "stages", r"declares stage 'data' but does not override select_data\(\)"),
        (NoisyLogits, "determinism", r"gives different weights from the same seed"),
        (EmptiesTheData, "pipeline", r"select_data under EmptiesTheData failed"),
        (ShardsWithoutPostprocess, "stages", r"postprocess"),
    ],
)
def test_broken_defense_fails_with_check_and_reason(cls: type, check: str, reason: str) -> None:
    with pytest.raises(ContractError, match=rf"^check_defense\[{check}\]: (?s:.*){reason}"):
        check_defense(cls)


def test_messages_name_the_class() -> None:
    with pytest.raises(ContractError) as error:
        check_attack(WrongWay)
    assert re.search(r"WrongWay", str(error.value))
