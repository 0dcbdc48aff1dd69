"""A conformance kit for plugin authors: tiny models, fixtures and contract checks.

Opt in with ``pytest -p kdbench.testing`` (or ``addopts = "-p kdbench.testing"`` in your pytest config) to get
the fixtures; the checks are plain functions and work without pytest::

    from kdbench.testing import check_attack, check_registered

    def test_contract():
        check_registered("attack", "myattack")   # the entry point is installed and loads
        check_attack(MyAttack)                    # registration, parameters, scoring, orientation, determinism

Every failure raises :class:`ContractError` (an ``AssertionError``) whose message starts with the check that
failed, e.g. ``check_attack[orientation]: ...``, and says what to change. The tiny world the checks use (a BPE
tokenizer and ``builtin:gpt2-micro`` models trained on a few dozen synthetic records) is built once per process
in a few seconds, from configs only: nothing is downloaded.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import functools
import json
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pytest
import torch

from kdbench.core.cache import ArtifactCache, spec_key
from kdbench.core.data import Example, PromptTemplate, content_hash
from kdbench.core.errors import KdbenchError, unknown_name_message
from kdbench.core.params import build_params, params_dict
from kdbench.core.registry import KINDS, build_registry
from kdbench.core.types import Encoded, TrainConfig, TrainedModel
from kdbench.defense.base import STAGES, DefenseBase, DefenseContext
from kdbench.defense.stack import DefenseStack
from kdbench.distill.job import DistillJob, distillation_loss
from kdbench.evaluation import metrics
from kdbench.models import hub as models
from kdbench.models.hub import model_config
from kdbench.scoring.context import ScoringContext, ScoringHost, ShadowRecipe
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import Need
from kdbench.scoring.tokenstats import TokenStats, compute_token_stats
from kdbench.tasks import synthetic
from kdbench.training.loop import LoopSettings, collate, encode, sft_loss, train_loop

__all__ = [
    "TINY_TASK_YAML",
    "ContractError",
    "KitHost",
    "TinyWorld",
    "check_attack",
    "check_defense",
    "check_distiller",
    "check_registered",
    "tiny_world",
]

SEED = 7
MODEL = "builtin:gpt2-micro"
VOCAB_SIZE = 400
MAX_PROMPT, MAX_TOTAL = 96, 128
N_PER_ROLE = 24  # members, non-members and distillation examples
N_HELD_OUT = 8  # text no model trains on (Need.NONMEMBER_TEXT)
TEACHER_TRAINING = TrainConfig(lr=1e-2, epochs=50, batch_size=8)  # enough epochs to memorise the members
STUDENT_TRAINING = TrainConfig(lr=3e-3, epochs=1, batch_size=8)
TEMPLATE = PromptTemplate(
    with_context="### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n",
    no_context="### Instruction:\n{instruction}\n\n### Response:\n",
)
KNOWN_NEEDS = frozenset(v for k, v in vars(Need).items() if k.isupper() and isinstance(v, str))
STAGE_METHODS = {
    "data": "select_data",
    "teacher_outputs": "transform_teacher_logits",
    "student_architecture": "modify_student",
    "training": "wrap_training",
    "postprocess": "postprocess",
}
# A task manifest of the same size as the kit's world, for end-to-end tests of a plugin with `kdbench run`.
TINY_TASK_YAML = """\
# A task small enough for end-to-end tests: micro models, a few dozen records, seconds on a 2-core CPU.
name: tiny-pii
version: 1
description: Test-sized synthetic-pii (written by kdbench.testing).
seed: 7
source:
  generator: synthetic-pii
  params: {n_people: 12, n_records: 130}
splits:
  sizes: {private: 40, public: 40, holdout: 40, eval: 10}
template:
  with_context: "### Instruction:\\n{instruction}\\n\\n### Input:\\n{context}\\n\\n### Response:\\n"
  no_context: "### Instruction:\\n{instruction}\\n\\n### Response:\\n"
evaluation: {n_attack: 30, n_eval: 10, max_new_tokens: 16, memorization_new_tokens: 16, memorization_compare: 8, \
pii_samples: 2, bootstrap: 100}
models: {teacher: "builtin:gpt2-micro", student: "builtin:gpt2-micro", vocab_size: 400, max_prompt_tokens: 96, \
max_total_tokens: 128}
training:
  teacher: {lr: 3.0e-3, epochs: 2, batch_size: 8}
  baseline: {lr: 3.0e-3, epochs: 1, batch_size: 8}
  student: {lr: 3.0e-3, epochs: 1, batch_size: 8}
"""


class ContractError(AssertionError):
    """A plugin breaks the contract the runner relies on; the message names the check and the fix."""


def _fail(check: str, message: str) -> ContractError:
    return ContractError(f"{check}: {message}")


# --- the tiny world ------------------------------------------------------------------------------------------


@dataclass
class TinyWorld:
    """A tokenizer, a teacher that memorised ``members``, and data for attacks and distillation.

    Treat ``teacher`` as read-only; :meth:`fresh_teacher` and :meth:`fresh_student` give copies to change.
    """

    tokenizer: Any
    template: PromptTemplate
    members: list[Example]
    nonmembers: list[Example]
    public: list[Example]
    held_out: list[Example]
    teacher: Any
    seed: int = SEED
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    _host: KitHost | None = None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, examples: Sequence[Example]) -> list[Encoded]:
        return encode(examples, self.tokenizer, self.template, MAX_PROMPT, MAX_TOTAL)

    def fresh_student(self) -> Any:
        """A newly initialised ``builtin:gpt2-micro`` (the same weights every call)."""
        return models.init_model(MODEL, self.tokenizer, self.seed)

    def fresh_teacher(self) -> Any:
        return copy.deepcopy(self.teacher)

    def token_stats(self, model: Any, samples: Sequence[Example]) -> TokenStats:
        return compute_token_stats(model, self.encode(samples), pad_id=self.pad_id, device=self.device)

    @property
    def host(self) -> KitHost:
        """The :class:`kdbench.scoring.context.ScoringHost` that serves every attack need on this world."""
        if self._host is None:
            self._host = KitHost(self)
        return self._host

    def attack_inputs(self, needs: frozenset[str] = frozenset({Need.TOKEN_STATS})) -> tuple[AttackInputs, np.ndarray]:
        """Members and non-members in a fixed shuffled order, as the runner passes them to an attack on the
        teacher (token statistics only if ``needs`` asks; ``scoring`` always), and their 1/0 labels."""
        samples = self.members + self.nonmembers
        labels = np.array([1] * len(self.members) + [0] * len(self.nonmembers))
        order = np.random.default_rng(self.seed).permutation(len(samples))
        shuffled = [samples[i] for i in order]
        scoring = ScoringContext(self.host, self.host.teacher, shuffled)
        stats = scoring.token_stats() if Need.TOKEN_STATS in needs else None
        return AttackInputs(samples=shuffled, token_stats=stats, scoring=scoring), labels[order]

    def defense_context(self) -> DefenseContext:
        """What a defense's ``prepare`` receives in a run, for the kit's teacher and data."""

        def teacher_scores(attack: Any, examples: Sequence[Example]) -> np.ndarray:
            scoring = ScoringContext(self.host, self.host.teacher, examples)
            stats = scoring.token_stats() if Need.TOKEN_STATS in attack.needs else None
            return np.asarray(attack.score(AttackInputs(examples, stats, scoring=scoring)), dtype=np.float64)

        return DefenseContext(
            teacher=self.host.teacher, teacher_model=self.fresh_teacher(), tokenizer=self.tokenizer,
            encode=self.encode, teacher_scores=teacher_scores, config=STUDENT_TRAINING, distillation=self.public,
            members=self.members, nonmembers=self.nonmembers, seed=self.seed, device=self.device,
        )

    def distill_job(
        self, defenses: DefenseStack | None = None, student: Any = None, examples: Sequence[Example] | None = None
    ) -> DistillJob:
        """A job as the runner builds it: defenses modify the student and select the data (unless ``examples``
        gives the selection) first."""
        stack = defenses or DefenseStack([])
        selected = stack.select_data(self.public) if examples is None else examples
        return DistillJob(
            teacher=self.fresh_teacher(),
            student=stack.modify_student(self.fresh_student() if student is None else student),
            tokenizer=self.tokenizer,
            data=self.encode(selected),
            config=STUDENT_TRAINING,
            seed=self.seed,
            device=self.device,
            teacher_key="kdbench-testing-teacher",
            defenses=stack,
            label="kdbench.testing",
        )


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: micro models gain nothing from more, and lose 10x on a busy shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_one_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper


def tiny_world() -> TinyWorld:
    """The kit's world, built once per process (a few seconds on a laptop CPU)."""
    with single_thread():
        return _build_world()


@functools.lru_cache(maxsize=1)
def _build_world() -> TinyWorld:
    records = synthetic.generate(seed=SEED, n_people=12, n_records=3 * N_PER_ROLE + N_HELD_OUT)
    random.Random(SEED).shuffle(records)
    members, nonmembers, public = (records[i * N_PER_ROLE : (i + 1) * N_PER_ROLE] for i in range(3))
    tokenizer = models.train_bpe_tokenizer([TEMPLATE.prompt(e) + e.response for e in records], VOCAB_SIZE)
    world = TinyWorld(tokenizer, TEMPLATE, members, nonmembers, public, records[3 * N_PER_ROLE :], teacher=None)
    teacher = models.init_model(MODEL, tokenizer, SEED)
    settings = LoopSettings(seed=SEED, pad_id=world.pad_id, device=world.device, label="kdbench.testing teacher")
    train_loop(teacher, world.encode(members), sft_loss, TEACHER_TRAINING, settings)
    world.teacher = teacher
    return world


class KitHost(ScoringHost):
    """Scoring on the kit's world, as ``RunHost`` does in a run: the teacher is the target, references and
    shadows are ``builtin:gpt2-micro`` fine-tuned with the teacher's recipe, the public split is the reference
    corpus and ``held_out`` the non-member text. Artifacts go to a private cache removed at exit."""

    def __init__(self, world: TinyWorld) -> None:
        root = Path(tempfile.mkdtemp(prefix="kdbench-testing-"))
        atexit.register(shutil.rmtree, root, True)
        self.world, self.cache, self.device = world, ArtifactCache(root), world.device
        self._models: dict[str, Any] = {}
        self.teacher = self._saved("teacher", world.teacher, {"members": content_hash(world.members)})

    @property
    def tokenizer(self) -> Any:
        return self.world.tokenizer

    def encode(self, examples: Sequence[Example], tokenizer: Any = None) -> list[Encoded]:
        return encode(examples, tokenizer or self.world.tokenizer, self.world.template, MAX_PROMPT, MAX_TOTAL)

    def full_text(self, example: Example) -> str:
        return self.world.template.prompt(example) + example.response

    def load(self, trained: TrainedModel) -> Any:
        if trained.key not in self._models:
            self._models[trained.key] = models.load_model(trained.path, self.device)
        return self._models[trained.key]

    def reference(self, name: str, target: TrainedModel) -> TrainedModel:
        if name not in ("auto", "public", "baseline"):
            raise KdbenchError(f"kdbench.testing offers the reference models auto, public and baseline, not {name!r}.")
        return self._fine_tuned("reference", MODEL, self.world.public, TEACHER_TRAINING)

    def shadow(self, target: TrainedModel, data: Sequence[Example], recipe: ShadowRecipe, label: str) -> TrainedModel:
        return self._fine_tuned("shadow", recipe.base or MODEL, data, recipe.apply(TEACHER_TRAINING))

    def corpus(self, need: str) -> Sequence[Example] | None:
        return {Need.TOKEN_FREQUENCIES: self.world.public, Need.NONMEMBER_TEXT: self.world.held_out}.get(need)

    def _fine_tuned(self, role: str, ref: str, data: Sequence[Example], config: TrainConfig) -> TrainedModel:
        spec = {"role": role, "ref": ref, "data": content_hash(data), "train": dataclasses.asdict(config)}

        def build(tmp: Path) -> None:
            model = models.init_model(ref, self.tokenizer, SEED)
            settings = LoopSettings(seed=SEED, pad_id=self.world.pad_id, device=self.device,
                                    label=f"kdbench.testing {role}")
            train_loop(model, self.encode(data), sft_loss, config, settings)
            models.save_model(model, self.tokenizer, tmp)

        return TrainedModel(role, role, spec_key(spec), self.cache.get_or_build("model", spec, build), ref)

    def _saved(self, role: str, model: Any, identity: dict[str, Any]) -> TrainedModel:
        spec = {"role": role, **identity}
        path = self.cache.get_or_build("model", spec, lambda tmp: models.save_model(model, self.tokenizer, tmp))
        return TrainedModel(role, role, spec_key(spec), path, MODEL)


# --- shared checks -------------------------------------------------------------------------------------------


def _label(cls: Any) -> str:
    return getattr(cls, "__qualname__", repr(cls))


def _check_registration(check: str, kind: str, cls: Any, methods: Sequence[str]) -> None:
    """The class has everything the loader and the runner read from it."""
    if not isinstance(cls, type):
        raise _fail(check, f"{cls!r} is not a class; pass the class you register.")
    missing = [attr for attr in ("name", "description", "Params") if not hasattr(cls, attr)]
    missing += [m for m in methods if not callable(getattr(cls, m, None))]
    if missing:
        raise _fail(check, f"{_label(cls)} lacks {', '.join(missing)}; see the {kind} Protocol in docs/plugins.md.")
    name, description, params = cls.name, cls.description, cls.Params  # type: ignore[attr-defined]
    separators = ",:= +" if kind == "Defense" else ",:= "  # `+` composes defense stacks
    if not isinstance(name, str) or not name or any(c in name for c in separators):
        shown = ", ".join(repr(c) for c in separators)
        raise _fail(check, f"{_label(cls)}.name is {name!r}; use a non-empty name without {shown} (they separate "
                    "plugin specs on the command line).")
    if not isinstance(description, str) or not description.strip():
        raise _fail(check, f"{_label(cls)}.description is empty; `kdbench list` shows its first line.")
    if not dataclasses.is_dataclass(params) or not isinstance(params, type):
        raise _fail(check, f"{_label(cls)}.Params is {params!r}; make it a dataclass (or use NoParams).")


def _check_parameters(check: str, cls: Any, params: Any) -> Any:
    """Params() builds with defaults, is JSON-ready, settable from the CLI, and the class keeps it as .params."""
    for f in dataclasses.fields(cls.Params):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(check, f"{_label(cls)}.Params field {f.name!r} has no default; every parameter needs one "
                        f"so that `{cls.name}` works without parameters.")
    try:
        defaults = cls.Params()
    except Exception as exc:
        message = f"{_label(cls)}.Params() raised {type(exc).__name__}: {exc}; defaults must be valid."
        raise _fail(check, message) from exc
    try:
        json.dumps(params_dict(defaults))
    except (TypeError, ValueError) as exc:
        raise _fail(check, f"{_label(cls)}.Params is not JSON-serialisable ({exc}); results and cache keys record "
                    "it, so use numbers, strings, booleans or None.") from exc
    _check_cli_round_trip(check, cls, defaults)
    params = defaults if params is None else params
    try:
        instance = cls(params)
    except Exception as exc:
        raise _fail(check, f"{_label(cls)}({params!r}) raised {type(exc).__name__}: {exc}.") from exc
    if getattr(instance, "params", None) != params:
        raise _fail(check, f"{_label(cls)} does not keep its parameters as `self.params`; the runner records "
                    "`instance.params` in results.jsonl and run.json.")
    return instance


def _check_cli_round_trip(check: str, cls: Any, defaults: Any) -> None:
    """Each default, written as the CLI would (``name:key=value``), must parse back to itself."""
    for f in dataclasses.fields(defaults):
        if not f.init:
            continue
        value = getattr(defaults, f.name)
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        try:
            parsed = build_params(cls.Params, ((f.name, text),), owner=cls.name)
        except KdbenchError as exc:
            raise _fail(check, f"parameter {f.name!r} of {_label(cls)} cannot be set from the command line "
                        f"({cls.name}:{f.name}={text}): {exc} Use int, float, bool, str, a Literal or an "
                        "Optional of those.") from exc
        if getattr(parsed, f.name) != value:
            raise _fail(check, f"{cls.name}:{f.name}={text} parses to {getattr(parsed, f.name)!r}, not the "
                        f"default {value!r}.")


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _check_model_runs(check: str, model: Any, world: TinyWorld, what: str) -> None:
    """A forward pass gives finite next-token logits over the tokenizer's vocabulary."""
    batch = collate(world.encode(world.public[:2]), world.pad_id)
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    except Exception as exc:
        raise _fail(check, f"{what} cannot run a forward pass: {type(exc).__name__}: {exc}.") from exc
    if logits.shape[:2] != batch["input_ids"].shape or logits.shape[-1] < len(world.tokenizer):
        raise _fail(check, f"{what} returns logits of shape {tuple(logits.shape)} for input "
                    f"{tuple(batch['input_ids'].shape)} and a vocabulary of {len(world.tokenizer)}.")
    if not torch.isfinite(logits).all():
        raise _fail(check, f"{what} returns non-finite logits.")


# --- attacks -------------------------------------------------------------------------------------------------


@_on_one_thread
def check_attack(cls: type[Any], params: Any = None) -> None:
    """Check an attack class: registration, parameters, scoring, orientation and determinism.

    Orientation: on the kit's teacher, trained until it memorised its members, the attack's AUC (members vs
    non-members, never flipped) must exceed 0.5 — higher score = more likely member.
    """
    _check_registration("check_attack[registration]", "Attack", cls, ("score",))
    needs = getattr(cls, "needs", None)
    if not isinstance(needs, frozenset) or not needs <= KNOWN_NEEDS:
        raise _fail("check_attack[registration]", f"{_label(cls)}.needs is {needs!r}; it must be a frozenset of "
                    f"Need constants ({', '.join(sorted(KNOWN_NEEDS))}), e.g. frozenset({{Need.TOKEN_STATS}}).")
    _check_parameters("check_attack[parameters]", cls, params)
    world = tiny_world()
    try:
        world.host.check_needs([(cls.name, needs)])
    except KdbenchError as exc:
        raise _fail("check_attack[needs]", str(exc)) from exc
    inputs, labels = world.attack_inputs(needs)
    first = _scores(cls, params, inputs)
    auc = metrics.roc_auc(first[labels == 1], first[labels == 0])
    if not auc > 0.5:
        raise _fail("check_attack[orientation]", f"{_label(cls)} scores non-members higher (AUC {auc:.2f} <= 0.5 on "
                    "a teacher that memorised its members); return higher scores for likely members.")
    second = _scores(cls, params, inputs)
    if not np.array_equal(first, second):
        worst = float(np.max(np.abs(first - second)))
        raise _fail("check_attack[determinism]", f"{_label(cls)} gives different scores for the same inputs (max "
                    f"difference {worst:.3g}); seed any randomness from the parameters, not the clock.")


def _scores(cls: Any, params: Any, inputs: AttackInputs) -> np.ndarray:
    """One fresh instance's scores, validated as the runner validates them."""
    check = "check_attack[scoring]"
    instance = cls(cls.Params() if params is None else params)
    try:
        raw = instance.score(inputs)
    except Exception as exc:
        hint = ""
        if inputs.token_stats is None:
            hint = " If it reads inputs.token_stats, declare needs = frozenset({Need.TOKEN_STATS})."
        raise _fail(check, f"{_label(cls)}.score raised {type(exc).__name__}: {exc}.{hint}") from exc
    scores = np.asarray(raw, dtype=np.float64)
    n = len(inputs.samples)
    if scores.shape != (n,):
        raise _fail(check, f"{_label(cls)}.score returned shape {scores.shape} for {n} samples; return one float "
                    "per sample, in the order of inputs.samples.")
    if not np.all(np.isfinite(scores)):
        raise _fail(check, f"{_label(cls)}.score returned {int((~np.isfinite(scores)).sum())} non-finite scores; "
                    "the runner refuses NaN and inf.")
    return scores


# --- distillers ----------------------------------------------------------------------------------------------


@_on_one_thread
def check_distiller(cls: type[Any], params: Any = None) -> None:
    """Check a distiller class: registration, parameters, that it trains the student it is given (same class,
    same parameter shapes, weights changed, teacher untouched) and that a fixed seed gives identical weights."""
    _check_registration("check_distiller[registration]", "Distiller", cls, ("distill",))
    _check_parameters("check_distiller[parameters]", cls, params)
    world = tiny_world()
    initial = _state(world.fresh_student())
    first = _distilled_state(cls, params, world, initial)
    second = _distilled_state(cls, params, world, initial)
    if not _same_state(first, second):
        raise _fail("check_distiller[determinism]", f"{_label(cls)} trains different weights from the same seed; "
                    "draw randomness from torch (seeded by job.train) or a generator seeded with job.seed.")


def _distilled_state(cls: Any, params: Any, world: TinyWorld, initial: dict[str, torch.Tensor]) -> dict[str, Any]:
    job = world.distill_job()
    teacher_before = _state(job.teacher)
    instance = cls(cls.Params() if params is None else params)
    try:
        result = instance.distill(job)
    except Exception as exc:
        raise _fail("check_distiller[training]", f"{_label(cls)}.distill raised {type(exc).__name__}: {exc}.") from exc
    if type(result) is not type(job.student):
        raise _fail("check_distiller[architecture]", f"{_label(cls)}.distill returned {type(result).__name__}, not "
                    f"the student's class {type(job.student).__name__}; train and return job.student.")
    after = _state(result)
    shapes = {k: tuple(v.shape) for k, v in after.items()}
    if shapes != {k: tuple(v.shape) for k, v in initial.items()}:
        raise _fail("check_distiller[architecture]", f"{_label(cls)}.distill returned a model whose parameters "
                    "differ in names or shapes from the student it was given; defenses, not distillers, change "
                    "the architecture.")
    if _same_state(after, initial):
        raise _fail("check_distiller[training]", f"{_label(cls)}.distill returned the student with its initial "
                    "weights; it must train it (e.g. with job.train(loss, config)).")
    if not all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point()):
        raise _fail("check_distiller[training]", f"{_label(cls)}.distill produced non-finite weights.")
    if not _same_state(_state(job.teacher), teacher_before):
        raise _fail("check_distiller[teacher]", f"{_label(cls)}.distill changed the teacher's weights; read the "
                    "teacher through job.teacher_logits(batch), never train it.")
    _check_model_runs("check_distiller[architecture]", result, world, f"the student {_label(cls)} returned")
    return after


# --- defenses ------------------------------------------------------------------------------------------------


@_on_one_thread
def check_defense(cls: type[Any], params: Any = None) -> None:
    """Check a defense class: registration, parameters, that it acts only at the stages it declares (every
    other hook is a no-op, as in DefenseBase) and that a full distillation with it runs deterministically."""
    check = "check_defense[stages]"
    _check_registration("check_defense[registration]", "Defense", cls, ())
    stages = getattr(cls, "stages", None)
    if not isinstance(stages, frozenset) or not all(isinstance(s, str) for s in stages):
        raise _fail("check_defense[registration]", f"{_label(cls)}.stages is {stages!r}; it must be a frozenset "
                    f"of stage names ({', '.join(STAGES)}).")
    for stage in sorted(stages):
        if stage not in STAGES:
            raise _fail(check, f"{_label(cls)} declares {unknown_name_message('stage', stage, STAGES)}")
    instance = _check_parameters("check_defense[parameters]", cls, params)
    world = tiny_world()
    for stage, method in STAGE_METHODS.items():
        if stage in stages:
            _check_declared(cls, stage, method)
        else:
            _check_undeclared(instance, cls, stage, method, world)
    first = _defended_state(cls, params, world)
    second = _defended_state(cls, params, world)
    if not _same_state(first, second):
        raise _fail("check_defense[determinism]", f"a distillation under {_label(cls)} gives different weights from "
                    "the same seed; draw randomness from torch (seeded by the training loop) or job.seed.")


def _check_declared(cls: Any, stage: str, method: str) -> None:
    hook = getattr(cls, method, None)
    if not callable(hook):
        raise _fail("check_defense[stages]", f"{_label(cls)} declares stage {stage!r} but has no {method}() method.")
    if issubclass(cls, DefenseBase) and hook is getattr(DefenseBase, method):
        raise _fail("check_defense[stages]", f"{_label(cls)} declares stage {stage!r} but does not override "
                    f"{method}(); implement it or drop {stage!r} from stages.")


def _check_undeclared(instance: Any, cls: Any, stage: str, method: str, world: TinyWorld) -> None:
    """A hook of an undeclared stage is never called by the runner, so it must do what DefenseBase does."""
    hook = getattr(instance, method, None)
    if hook is None or getattr(cls, method, None) is getattr(DefenseBase, method, object()):
        return
    try:
        no_op = _NO_OP_PROBES[method](hook, world)
    except Exception as exc:
        raise _fail("check_defense[stages]", f"{_label(cls)}.{method}() raised {type(exc).__name__}: {exc}, and "
                    f"stage {stage!r} is not in stages.") from exc
    if not no_op:
        raise _fail("check_defense[stages]", f"{_label(cls)} overrides {method}() but does not declare stage "
                    f"{stage!r} in stages, so the runner never calls it; add {stage!r} to stages.")


def _probe_data(hook: Callable[..., Any], world: TinyWorld) -> bool:
    return list(hook(list(world.public))) == list(world.public)


def _probe_logits(hook: Callable[..., Any], world: TinyWorld) -> bool:
    logits = torch.randn(2, 5, len(world.tokenizer), generator=torch.Generator().manual_seed(0))
    out = hook(logits.clone())
    return isinstance(out, torch.Tensor) and torch.equal(out, logits)


def _probe_student(hook: Callable[..., Any], world: TinyWorld) -> bool:
    student = world.fresh_student()
    before = _state(student)
    out = hook(student)
    return out is student and _same_state(_state(out), before)


def _probe_training(hook: Callable[..., Any], world: TinyWorld) -> bool:
    model = world.fresh_student()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    out = tuple(hook(model, optimizer, scheduler))
    return len(out) == 3 and out[0] is model and out[1] is optimizer and out[2] is scheduler


def _probe_postprocess(hook: Callable[..., Any], world: TinyWorld) -> bool:
    student = world.fresh_student()
    return bool(hook([student]) is student)


_NO_OP_PROBES: dict[str, Callable[[Callable[..., Any], TinyWorld], bool]] = {
    "select_data": _probe_data,
    "transform_teacher_logits": _probe_logits,
    "modify_student": _probe_student,
    "wrap_training": _probe_training,
    "postprocess": _probe_postprocess,
}


def _defended_state(cls: Any, params: Any, world: TinyWorld) -> dict[str, torch.Tensor]:
    """Distil a student under this defense alone through the lifecycle ``RunContext.student`` runs (check,
    prepare, data, shards, architecture, training, postprocess, report), with a plain forward-KL loss."""
    check = "check_defense[pipeline]"
    try:
        stack = DefenseStack([cls(cls.Params() if params is None else params)])
    except KdbenchError as exc:
        raise _fail("check_defense[stages]", str(exc)) from exc
    selected = _step(check, cls, "check, prepare and select_data", lambda: _selected(stack, world))
    if not all(isinstance(e, Example) for e in selected):
        raise _fail(check, f"{_label(cls)}.select_data returned something other than Example objects.")
    shards = _step(check, cls, "shards", lambda: stack.shards(selected))
    students = [_step(check, cls, "training", functools.partial(_shard_student, stack, world, i, shard))
                for i, shard in enumerate(shards)]
    student = _step(check, cls, "postprocess", lambda: stack.postprocess(students))
    try:
        json.dumps(stack.report())
    except (TypeError, ValueError) as exc:
        raise _fail(check, f"{_label(cls)}.report() is not JSON-serialisable ({exc}); results record it.") from exc
    _check_model_runs(check, student, world, f"the student {_label(cls)} produced")
    return _state(student)


def _step(check: str, cls: Any, what: str, run: Callable[[], _R]) -> _R:
    try:
        return run()
    except ContractError:
        raise
    except Exception as exc:
        raise _fail(check, f"{what} under {_label(cls)} failed: {type(exc).__name__}: {exc}") from exc


def _selected(stack: DefenseStack, world: TinyWorld) -> list[Example]:
    if stack.checks:
        stack.check(model_config(MODEL), "kd")
    stack.prepare(world.defense_context())
    return stack.select_data(world.public)


def _shard_student(stack: DefenseStack, world: TinyWorld, index: int, shard: list[Example]) -> Any:
    stack.start_student(index, len(shard))
    job = world.distill_job(stack, examples=shard)
    job.train(distillation_loss(job, "fkl"), job.config)
    stack.finish_student(index, job.student)
    return job.student


# --- installation --------------------------------------------------------------------------------------------


def check_registered(kind: str, name: str) -> Any:
    """Check that an installed entry point registers ``name`` as a ``kind`` (singular or plural); return its
    :class:`kdbench.core.registry.PluginInfo` (class, distribution, version, entry point)."""
    plural = kind if kind in KINDS else f"{kind}s" if f"{kind}s" in KINDS else None
    if plural is None:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} (or their singular), got {kind!r}")
    check = "check_registered"
    try:
        registry = build_registry()
    except KdbenchError as exc:
        raise _fail(check, f"loading the installed plugins failed: {exc}") from exc
    if name not in registry.entries[plural]:
        available = unknown_name_message(plural[:-1], name, registry.names(plural))
        raise _fail(check, f"{available} Is the package installed (pip install -e .) and its pyproject's "
                    "[project.entry-points.kdbench] naming the module that registers it?")
    return registry.get(plural, name)


# --- pytest fixtures (active with `-p kdbench.testing`) ---------------------------------------------------------


@pytest.fixture(scope="session")
def kdbench_world() -> TinyWorld:
    """The kit's tiny world: tokenizer, a teacher that memorised ``members``, non-members and public data."""
    return tiny_world()


@pytest.fixture(scope="session")
def kdbench_tokenizer(kdbench_world: TinyWorld) -> Any:
    return kdbench_world.tokenizer


@pytest.fixture
def kdbench_teacher(kdbench_world: TinyWorld) -> Any:
    """A copy of the tiny teacher (``builtin:gpt2-micro`` fine-tuned on ``kdbench_world.members``)."""
    return kdbench_world.fresh_teacher()


@pytest.fixture
def kdbench_student(kdbench_world: TinyWorld) -> Any:
    """A freshly initialised ``builtin:gpt2-micro`` student."""
    return kdbench_world.fresh_student()


@pytest.fixture(scope="session")
def kdbench_attack_inputs(kdbench_world: TinyWorld) -> tuple[AttackInputs, np.ndarray]:
    """``AttackInputs`` on the teacher (token statistics included) and the 1/0 membership labels."""
    return kdbench_world.attack_inputs()


@pytest.fixture
def kdbench_distill_job(kdbench_world: TinyWorld) -> DistillJob:
    """A :class:`kdbench.distill.job.DistillJob` with a fresh student, the teacher and the public data."""
    return kdbench_world.distill_job()


@pytest.fixture(scope="session")
def kdbench_tiny_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny task manifest for end-to-end tests: ``kdbench run --task <it> --distiller kd --attack NAME``."""
    path = tmp_path_factory.mktemp("kdbench-task") / "tiny-task.yaml"
    path.write_text(TINY_TASK_YAML, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def kdbench_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kdbench-cache")


@pytest.fixture(autouse=True)
def _kdbench_isolated_cache(kdbench_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep test runs out of the user's ~/.cache/kdbench unless KDBENCH_CACHE_DIR is set explicitly."""
    import os

    if not os.environ.get("KDBENCH_CACHE_DIR"):
        monkeypatch.setenv("KDBENCH_CACHE_DIR", str(kdbench_cache_dir))
    yield
