"""The defense interface: hooks called at their stages in order, stacks that compose or are refused before any
training, students on shards, defended models through the cache, greedy decoding without HF generate, deltas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdbench.cli import main
from kdbench.core.cache import ArtifactCache
from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError, PluginError
from kdbench.core.params import PluginSpec, parse_specs
from kdbench.core.plugin import NoParams
from kdbench.core.progress import NullReporter
from kdbench.core.registry import get_registry
from kdbench.defense.base import DefenseBase
from kdbench.defense.stack import DefenseStack
from kdbench.distill.job import DistillJob
from kdbench.models import hub as models
from kdbench.models.defended import instantiate, is_defended
from kdbench.results.deltas import paired_risk_delta, utility_delta
from kdbench.run.cells import attack_samples, make_context
from kdbench.run.config import RunConfig
from kdbench.run.context import RunContext
from kdbench.run.grid import Cell
from kdbench.run.plan import check_defenses, defense_stacks
from kdbench.run.student import build_student
from kdbench.training.loop import generate, sft_loss
from tests.conftest import TINY_TASK
from tests.distill_helpers import tiny_model, tokenizer


@pytest.fixture(scope="module")
def ctx(cache_dir: Path) -> RunContext:
    config = RunConfig(distillers=parse_specs("kd"), attacks=parse_specs("loss"), tasks=[str(TINY_TASK)])
    cell = Cell(str(TINY_TASK), 0, None, None, PluginSpec("kd"), (PluginSpec("none"),))
    return make_context(config, cell, ArtifactCache(cache_dir), NullReporter())


class Recorder(DefenseBase):
    """Acts at every stage and lifecycle point, recording the calls (and trains two students)."""

    name = "recorder"
    description = "test"
    stages: ClassVar[frozenset[str]] = frozenset(
        {"data", "teacher_outputs", "student_architecture", "training", "postprocess"}
    )
    calls: ClassVar[list[str]] = []

    def check(self, model_config: Any, distiller: str) -> None:
        self.calls.append(f"check {model_config.model_type} {distiller}")

    def prepare(self, context: Any) -> None:
        super().prepare(context)
        self.calls.append(f"prepare {len(context.members)}")

    def select_data(self, examples: Sequence[Example]) -> list[Example]:
        self.calls.append("select_data")
        return list(examples)[:-2]

    def shards(self, examples: list[Example]) -> list[list[Example]]:
        self.calls.append("shards")
        return [examples[0::2], examples[1::2]]

    def start_student(self, index: int, n_examples: int) -> None:
        self.calls.append(f"start {index} {n_examples}")

    def modify_student(self, model: Any) -> Any:
        self.calls.append("modify_student")
        return model

    def wrap_training(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        self.calls.append("wrap_training")
        return model, optimizer, scheduler

    def finish_student(self, index: int, student: Any) -> None:
        self.calls.append(f"finish {index}")

    def postprocess(self, students: Sequence[Any]) -> Any:
        self.calls.append(f"postprocess {len(students)}")
        return students[0]

    def report(self) -> dict[str, Any]:
        return {"calls": len(self.calls)}


class Memorise:
    """A distiller that records the data of each job and trains one SFT epoch through the shared loop."""

    name = "memorise"
    params = NoParams()
    seen: ClassVar[list[set[tuple[int, ...]]]] = []

    def distill(self, job: DistillJob) -> Any:
        self.seen.append({e.input_ids for e in job.data})
        job.train(sft_loss, job.config)
        return job.student


def test_hooks_run_at_their_stages_in_order(ctx: RunContext) -> None:
    Recorder.calls.clear()
    teacher = ctx.teacher()
    samples = attack_samples(ctx.task, ctx.splits)
    stack = DefenseStack([Recorder(NoParams())])
    student = build_student(ctx, teacher, Memorise(), "memorise", stack, "recorder", samples)
    n = len(ctx.distillation_data()) - 2
    assert Recorder.calls == [
        "check gpt2 memorise", f"prepare {len(samples[0])}", "select_data", "shards",
        f"start 0 {(n + 1) // 2}", "modify_student", "wrap_training", "finish 0",
        f"start 1 {n // 2}", "modify_student", "wrap_training", "finish 1", "postprocess 2",
    ]
    assert (student.path / "defense_report.json").read_text().strip().startswith("{")


def test_ensemble_trains_k_students_on_disjoint_shards_and_round_trips(ctx: RunContext) -> None:
    Memorise.seen.clear()
    stack = DefenseStack([instantiate("ensemble", {"k": 2, "min_class_fraction": 0.2})])
    samples = attack_samples(ctx.task, ctx.splits)
    student = build_student(ctx, ctx.teacher(), Memorise(), "memorise", stack, "ensemble", samples)
    first, second = Memorise.seen
    assert first and second and not first & second
    assert first | second == {e.input_ids for e in ctx.encode(ctx.distillation_data())}
    assert is_defended(student.path)
    model = models.load_model(student.path)
    assert len(model.members) == 2 and not hasattr(model, "generate")
    ids = torch.tensor([ctx.encode(ctx.distillation_data()[:1])[0].input_ids])
    with torch.no_grad():
        probs = [torch.softmax(m(input_ids=ids).logits, -1) for m in model.members]
        assert torch.allclose(model(input_ids=ids).logits, torch.log(sum(probs) / 2), atol=1e-5)
    out = generate(model, [list(ids[0, :5])], max_new_tokens=3, pad_id=0, eos_id=-1, device=torch.device("cpu"))
    assert len(out[0]) == 3


def test_architecture_defenses_survive_save_and_load(tmp_path: Path) -> None:
    stack = DefenseStack([instantiate("nonorm", {}), instantiate("bottleneck", {"B": 8})])
    model = stack.modify_student(tiny_model(0)).eval()
    models.save_model(model, tokenizer(), tmp_path)
    loaded = models.load_model(tmp_path)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert type(loaded.transformer.ln_f).__name__ == "Affine"
    assert loaded.transformer.h[0].mlp.c_fc[0].out_features == 8


class NoGenerate(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs: Any) -> Any:
        return self.model(**kwargs)


def test_greedy_fallback_matches_hf_generate() -> None:
    model = tiny_model(3).eval()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12], [4]]
    options: dict[str, Any] = {"max_new_tokens": 6, "pad_id": 0, "eos_id": 1, "device": torch.device("cpu")}
    assert generate(NoGenerate(model), prompts, **options) == generate(model, prompts, **options)


@pytest.mark.parametrize(("stack", "message"), [
    ("ensemble+ensemble", "appears twice"),
    ("redlist+temperature", "both post-process"),
    ("ensemble+redlist", "both post-process"),
    ("none+nonorm", "'none' acts at no stage"),
])
def test_stacks_that_do_not_compose_are_refused(stack: str, message: str) -> None:
    defenses = [instantiate(spec.name, {}) for spec in parse_specs(stack.replace("+", ","))]
    with pytest.raises(KdbenchError, match=message):
        DefenseStack(defenses)


def test_composing_defenses_apply_each() -> None:
    stack = DefenseStack([instantiate("nonorm", {}), instantiate("bottleneck", {"B": 4}),
                          instantiate("teacher-smoothing", {"mode": "temperature", "temperature": 2.0, "top_k": 10})])
    model = stack.modify_student(tiny_model(0))
    assert [e["name"] for e in model.config.kdbench_architecture] == ["nonorm", "bottleneck"]
    assert torch.equal(stack.transform_teacher_logits(torch.ones(2) * 4), torch.ones(2) * 2)


def test_refused_before_any_training(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for defense, message in (("ensemble+ensemble", "appears twice"), ("nonorm+all", "'all' cannot be composed")):
        result = CliRunner().invoke(main, ["run", "--task", str(TINY_TASK), "--distiller", "kd", "--attack", "loss",
                                           "--defense", defense, "--out", str(tmp_path / "out")],
                                    env={"KDBENCH_CACHE_DIR": str(cache)})
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (cache / "model").exists()


def test_unknown_architecture_or_distiller_is_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import GPTNeoConfig

    registry = get_registry()
    monkeypatch.setattr("kdbench.models.hub.model_config", lambda ref, trust: GPTNeoConfig())
    with pytest.raises(KdbenchError, match="bottleneck does not know the FFN of a 'gpt_neo' model"):
        check_defenses(registry, [(PluginSpec("bottleneck"),)], [PluginSpec("kd")], {"some/gpt-neo"}, False)
    with pytest.raises(KdbenchError, match="sft distiller never reads the teacher"):
        check_defenses(registry, [(PluginSpec("teacher-smoothing"),)], [PluginSpec("sft")], {"x"}, False)


def test_all_means_one_cell_per_defense() -> None:
    registry = get_registry()
    stacks = defense_stacks(registry, [(PluginSpec("all"),), (PluginSpec("nonorm"), PluginSpec("bottleneck"))])
    assert [s[0].name for s in stacks[:-1]] == registry.names("defenses")
    assert [s.name for s in stacks[-1]] == ["nonorm", "bottleneck"]
    with pytest.raises(PluginError):
        defense_stacks(registry, [(PluginSpec("nonorm"), PluginSpec("all"))])


def test_paired_risk_delta_and_utility_delta() -> None:
    rng = np.random.default_rng(0)
    leaky = {"loss": np.concatenate([rng.normal(1, 1, 50), rng.normal(0, 1, 50)])}
    blind = {"loss": rng.normal(0, 1, 100)}
    delta, (low, high) = paired_risk_delta(blind, leaky, 50, n_resamples=200)
    assert delta < 0 and low <= delta <= high < 0
    assert paired_risk_delta(leaky, leaky, 50, n_resamples=50) == (0.0, (0.0, 0.0))

    class Eval:
        def __init__(self, mean: float, ci: tuple[float, float], samples: Any = None) -> None:
            self.rouge_l, self.rouge_l_ci, self.rouge_l_samples = mean, ci, samples

    delta_u, ci, method = utility_delta(Eval(20.0, (18.0, 22.0)), Eval(25.0, (22.0, 28.0)))
    assert delta_u == -5.0 and method == "independent approximation"
    assert ci == pytest.approx((-5.0 - np.hypot(2, 3), -5.0 + np.hypot(2, 3)))
    a, b = rng.uniform(0, 50, 40), rng.uniform(0, 50, 40)
    _, paired, method = utility_delta(Eval(a.mean(), (0, 0), a), Eval(b.mean(), (0, 0), b))
    assert method == "paired bootstrap" and paired[0] < a.mean() - b.mean() < paired[1]
