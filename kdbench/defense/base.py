"""The defense interface (DESIGN.md §2, METHODS.md §7).

A defense acts at any of five *stages* (:data:`STAGES`): it overrides the hook of each stage it needs and names
those stages in ``stages``; the runner calls each hook at its stage, in the order the defenses were given.
Around the stages, a few *lifecycle* methods (:class:`DefenseLifecycle`) let a defense refuse a setting it
cannot apply to before any training (``check``), read what it needs about the cell (``prepare`` with a
:class:`DefenseContext`: the teacher, its attack scores, the members and non-members that set thresholds, the
seed), ask for several students on disjoint shards (``shards``), follow each student's training
(``start_student`` / ``finish_student``) and report what it measured (``report``, ``assess``: spent ε, an
ensemble's majority vote), which the runner records beside the results.

A :class:`DefenseStack` composes defenses (``--defense nonorm+bottleneck``) and refuses, before any training,
stacks that do not compose: a defense twice (an ensemble of ensembles), two defenses that both decide the final
model at ``postprocess``, ``none`` beside a defense.

Defended models survive the cache: an architecture change is recorded in the model's ``config.json``
(:data:`ARCHITECTURE_KEY`) and re-applied on load; a post-processed model (an ensemble, a logit-adjusting
wrapper) saves itself with a :data:`MARKER` file naming its defense, whose ``load_processed`` rebuilds it.
:func:`kdbench.models.hub.load_model` recognises both through :func:`is_defended` / :func:`load_defended`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.plugin import NoParams, Plugin
from kdbench.core.types import Encoded, TrainConfig


@runtime_checkable
class Defense(Plugin, Protocol):
    """A defense. ``stages`` names the hook points it implements (see :class:`kdbench.defense.base.DefenseBase`)."""

    stages: ClassVar[frozenset[str]]

    def __init__(self, params: Any) -> None: ...

STAGES = ("data", "teacher_outputs", "student_architecture", "training", "postprocess")
REPORT_FILE = "defense_report.json"
"""What the defenses measured while building a student (:meth:`DefenseStack.report`), beside its weights."""


@dataclass
class DefenseContext:
    """What a defense may read about its cell (given to :meth:`DefenseLifecycle.prepare`).

    ``teacher_scores(attack, examples)`` scores ``examples`` with an attack instance (see :func:`resolve_attack`)
    against the trained teacher, through the run's cached token statistics. ``config`` is the student's
    training config; ``distillation`` the distillation set before any data defense. ``members`` /
    ``nonmembers`` are the attack samples every target is evaluated on: teacher-attack thresholds are set on them.
    """

    teacher: Any  # kdbench.core.types.TrainedModel
    teacher_model: Any
    tokenizer: Any
    encode: Callable[[Sequence[Example]], list[Encoded]]
    teacher_scores: Callable[[Any, Sequence[Example]], np.ndarray]
    config: TrainConfig
    distillation: Sequence[Example] = ()
    members: Sequence[Example] = ()
    nonmembers: Sequence[Example] = ()
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class DefenseLifecycle:
    """The non-stage methods: validation, context, students, reports. All optional; the defaults do nothing."""

    uses_attack_samples: ClassVar[bool] = False
    """True when the defense reads ``context.members`` / ``nonmembers`` (they then enter the student's key)."""
    context: DefenseContext | None = None

    def check(self, model_config: Any, distiller: str) -> None:
        """Raise :class:`KdbenchError` if the defense cannot apply to this student architecture
        (``model_config``, a transformers config; None when it cannot be read yet) or distiller; called before
        any training."""

    def prepare(self, context: DefenseContext) -> None:
        """Receive the cell's context, once, before the first stage hook."""
        self.context = context

    def shards(self, examples: list[Example]) -> list[list[Example]]:
        """The training sets of the students to train (one by default); several ask for an ensemble, which
        then must be combined at ``postprocess``."""
        return [examples]

    def start_student(self, index: int, n_examples: int) -> None:
        """Student ``index`` is about to be trained on ``n_examples`` examples."""

    def finish_student(self, index: int, student: Any) -> None:
        """Student ``index`` is trained (e.g. to read a privacy accountant and detach hooks)."""

    def report(self) -> dict[str, Any]:
        """What the defense measured while the student was built (JSON-ready), recorded with the results."""
        return {}

    def assess(self, student: Any, score: Callable[[Any], dict[str, np.ndarray]], n_members: int) -> dict[str, Any]:
        """Extra measurements on the finished student at evaluation time: ``score(trained_model)`` gives every
        run attack's per-sample scores (members first, ``n_members`` of them) for any cached model."""
        return {}

    @classmethod
    def load_processed(cls, directory: Path, marker: dict[str, Any], trust_remote_code: bool = False) -> Any:
        """Rebuild the model this defense's ``postprocess`` saved in ``directory``."""
        raise KdbenchError(f"{directory}: defense {getattr(cls, 'name', cls.__name__)!r} cannot load saved models.")


class DefenseBase(DefenseLifecycle):
    """No-op implementations of every hook point; subclass and override what the defense needs."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type] = NoParams
    stages: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any) -> None:
        self.params = params

    def select_data(self, examples: Sequence[Example]) -> list[Example]:
        """``data``: choose or transform the distillation examples."""
        return list(examples)

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``teacher_outputs``: change the teacher's next-token logits before the student sees them."""
        return logits

    def modify_student(self, model: Any) -> Any:
        """``student_architecture``: change the student before training (e.g. no LayerNorm, bottleneck FFN)."""
        return model

    def wrap_training(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """``training``: wrap the model/optimiser (e.g. a privacy engine)."""
        return model, optimizer, scheduler

    def postprocess(self, students: Sequence[Any]) -> Any:
        """``postprocess``: combine or post-process the finished student(s)."""
        return students[0]
