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
:func:`kdbench.models.load_model` recognises both through :func:`is_defended` / :func:`load_defended`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from kdbench.data import Example
from kdbench.errors import KdbenchError, ParameterError, PluginError
from kdbench.metrics import best_balanced_accuracy
from kdbench.params import build_params, params_dict, parse_specs
from kdbench.protocols import NoParams
from kdbench.training import Encoded, TrainConfig

STAGES = ("data", "teacher_outputs", "student_architecture", "training", "postprocess")
ARCHITECTURE_KEY = "kdbench_architecture"
"""``config.json`` key listing the architecture defenses (name, params) applied to a model, in order."""
MARKER = "kdbench-defended.json"
"""File naming the defense whose ``load_processed`` rebuilds a post-processed model saved in a directory."""
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

    teacher: Any  # kdbench.stages.TrainedModel
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


def _overrides(defense: Any, method: str) -> bool:
    impl = getattr(type(defense), method, None)
    return impl is not None and impl is not getattr(DefenseLifecycle, method)


class DefenseStack:
    """Several defenses applied in order, each at the stages it declares; refuses stacks that do not compose."""

    def __init__(self, defenses: Sequence[Any]) -> None:
        self.defenses = list(defenses)
        check_composition(self.defenses)

    def _at(self, stage: str) -> list[Any]:
        return [d for d in self.defenses if stage in d.stages]

    def _each(self, method: str, *args: Any) -> None:
        for defense in self.defenses:
            hook = getattr(defense, method, None)
            if hook is not None:
                hook(*args)

    @property
    def uses_attack_samples(self) -> bool:
        return any(getattr(d, "uses_attack_samples", False) for d in self.defenses)

    @property
    def checks(self) -> bool:
        """Whether any defense validates the student's config (so the caller need not read it otherwise)."""
        return any(_overrides(d, "check") for d in self.defenses)

    # --- lifecycle --------------------------------------------------------------------------------------------
    def check(self, model_config: Any, distiller: str) -> None:
        self._each("check", model_config, distiller)

    def prepare(self, context: DefenseContext) -> None:
        self._each("prepare", context)

    def shards(self, examples: list[Example]) -> list[list[Example]]:
        for defense in self.defenses:
            if _overrides(defense, "shards"):
                return defense.shards(examples)
        return [examples]

    def start_student(self, index: int, n_examples: int) -> None:
        self._each("start_student", index, n_examples)

    def finish_student(self, index: int, student: Any) -> None:
        self._each("finish_student", index, student)

    def report(self) -> dict[str, Any]:
        reports = {d.name: d.report() for d in self.defenses if hasattr(d, "report")}
        return {name: r for name, r in reports.items() if r}

    def assess(self, student: Any, score: Callable[[Any], dict[str, np.ndarray]], n_members: int) -> dict[str, Any]:
        found = {d.name: d.assess(student, score, n_members) for d in self.defenses if hasattr(d, "assess")}
        return {name: r for name, r in found.items() if r}

    # --- stages -----------------------------------------------------------------------------------------------
    def select_data(self, examples: Sequence[Example]) -> list[Example]:
        out = list(examples)
        for defense in self._at("data"):
            out = defense.select_data(out)
        if not out:
            raise KdbenchError("The data defenses left no distillation examples.")
        return out

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        for defense in self._at("teacher_outputs"):
            logits = defense.transform_teacher_logits(logits)
        return logits

    def modify_student(self, model: Any) -> Any:
        """Each architecture defense in turn; each is recorded in the model's config so a load re-applies it."""
        for defense in self._at("student_architecture"):
            model = defense.modify_student(model)
            config = getattr(model, "config", None)
            if config is not None:
                entry = {"name": defense.name, "params": params_dict(defense.params)}
                setattr(config, ARCHITECTURE_KEY, [*(getattr(config, ARCHITECTURE_KEY, None) or []), entry])
        return model

    @property
    def wraps_training(self) -> bool:
        return bool(self._at("training"))

    def wrap_training(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        for defense in self._at("training"):
            model, optimizer, scheduler = defense.wrap_training(model, optimizer, scheduler)
        return model, optimizer, scheduler

    def postprocess(self, students: Sequence[Any]) -> Any:
        stages = self._at("postprocess")
        if stages:
            return stages[0].postprocess(students)
        if len(students) != 1:
            raise KdbenchError(f"{len(students)} students were trained but no defense combines them at postprocess.")
        return students[0]


def check_composition(defenses: Sequence[Any]) -> None:
    """Refuse stacks whose defenses cannot act together (before any training)."""
    names = [d.name for d in defenses]
    label = "+".join(names)
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            raise KdbenchError(
                f"Defense stack {label!r}: {name!r} appears twice. A defense composes with others, not with itself "
                "(an ensemble of ensembles, a double bottleneck, ... are not supported)."
            )
    if "none" in names and len(names) > 1:
        raise KdbenchError(f"Defense stack {label!r}: 'none' means no defense; drop it from the stack.")
    final = [d.name for d in defenses if "postprocess" in d.stages]
    if len(final) > 1:
        raise KdbenchError(
            f"Defense stack {label!r}: {' and '.join(final)} both post-process the finished student, and only one "
            "can decide the final model. Run them as separate stacks (--defense a,b)."
        )
    for defense in defenses:
        if _overrides(defense, "shards") and "postprocess" not in defense.stages:
            raise KdbenchError(f"Defense {defense.name!r} trains several students but does not combine them at "
                               "postprocess; declare the 'postprocess' stage.")


# --- helpers for defenses ---------------------------------------------------------------------------------------


def resolve_attack(spec: str, owner: str) -> Any:
    """An attack plugin instance from a spec such as ``loss`` or ``mink:k=0.1`` (a defense parameter)."""
    from kdbench.plugins import get_registry

    specs = parse_specs(spec)
    if len(specs) != 1:
        raise ParameterError(f"{owner}: attack={spec!r} must name one attack (e.g. loss or mink:k=0.1).")
    try:
        info = get_registry().get("attacks", specs[0].name)
    except KdbenchError as exc:
        raise ParameterError(f"{owner}: {exc}") from None
    return info.cls(build_params(info.cls.Params, specs[0].raw, owner=f"{owner}'s attack {specs[0].name}"))


def flag_vulnerable(
    context: DefenseContext | None, attack: Any, examples: Sequence[Example], min_class_fraction: float, owner: str
) -> tuple[np.ndarray, float]:
    """[C]'s vulnerable points: ``examples`` whose teacher-attack score is at or above the attack's
    balanced-accuracy threshold on the context's members vs non-members. Returns (flags, threshold)."""
    if context is None:
        raise KdbenchError(f"Defense {owner!r} needs the run's DefenseContext (DefenseStack.prepare) first.")
    if not context.members or not context.nonmembers:
        raise KdbenchError(f"Defense {owner!r} needs members and non-members to set the teacher attack's threshold.")
    reference = np.asarray(context.teacher_scores(attack, [*context.members, *context.nonmembers]), dtype=float)
    n = len(context.members)
    _, threshold = best_balanced_accuracy(reference[:n], reference[n:], min_class_fraction)
    scores = np.asarray(context.teacher_scores(attack, examples), dtype=float)
    return scores >= threshold, threshold


def attack_scorer(host: Any, trained: Any) -> Callable[[Any, Sequence[Example]], np.ndarray]:
    """A ``DefenseContext.teacher_scores``: an attack instance's scores of any examples against ``trained``,
    through ``host``'s (a :class:`kdbench.scoring.ScoringHost`) cached token statistics."""
    from kdbench.protocols import AttackInputs, Need
    from kdbench.scoring import ScoringContext  # here: kdbench.scoring imports kdbench.stages, which imports us

    def scores(attack: Any, examples: Sequence[Example]) -> np.ndarray:
        scoring = ScoringContext(host, trained, examples)
        stats = scoring.token_stats() if Need.TOKEN_STATS in attack.needs else None
        return np.asarray(attack.score(AttackInputs(samples=examples, token_stats=stats, scoring=scoring)), dtype=float)

    return scores


def model_config(ref: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a base model reference (what ``check`` receives), without loading weights."""
    from transformers import AutoConfig, GPT2Config

    from kdbench import models

    if models.is_builtin(ref):
        p = models.preset(ref)
        return GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=p.n_positions)
    try:
        return AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise KdbenchError(f"Cannot read the model config of {ref}: {exc}") from exc


# --- saving and loading defended models -------------------------------------------------------------------------


def write_marker(directory: Path, defense: str, **extra: Any) -> None:
    """Mark ``directory`` as holding a model post-processed by ``defense`` (see :func:`load_defended`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(json.dumps({"defense": defense, **extra}, indent=1, sort_keys=True))


def is_defended(ref: str | Path) -> bool:
    """Whether ``ref`` is a directory holding a post-processed or architecture-modified model."""
    path = Path(ref)
    if (path / MARKER).is_file():
        return True
    config = path / "config.json"
    return config.is_file() and ARCHITECTURE_KEY in json.loads(config.read_text(encoding="utf-8"))


def _defense_class(name: str) -> Any:
    from kdbench.plugins import get_registry

    try:
        return get_registry().get("defenses", name).cls
    except KdbenchError as exc:
        raise PluginError(f"A saved model needs defense {name!r} to load, which is not installed: {exc}") from None


def instantiate(name: str, params: dict[str, Any]) -> Any:
    """A registered defense with recorded parameters (as :func:`kdbench.params.params_dict` wrote them)."""
    cls = _defense_class(name)
    return cls(cls.Params(**params))


def load_defended(ref: str | Path, device: torch.device | None = None, trust_remote_code: bool = False) -> Any:
    path = Path(ref)
    marker_file = path / MARKER
    if marker_file.is_file():
        marker = json.loads(marker_file.read_text(encoding="utf-8"))
        model = _defense_class(marker["defense"]).load_processed(path, marker, trust_remote_code)
    else:
        model = _load_modified(path, trust_remote_code)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _load_modified(path: Path, trust_remote_code: bool) -> Any:
    """Rebuild the architecture from config + the recorded defenses, then load the saved weights into it."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    for entry in getattr(config, ARCHITECTURE_KEY):
        model = instantiate(entry["name"], entry["params"]).modify_student(model)
    index = path / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.exists():  # a sharded checkpoint
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[name].data_ptr() for name in state if name in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]  # tied copies are fine
    if unexpected or untied:
        raise KdbenchError(
            f"{path}: the saved weights do not fit the defended architecture (missing {untied[:5]}, unexpected "
            f"{unexpected[:5]}); the cache entry is stale or the defense changed. Clear it with `kdbench cache`."
        )
    return model
