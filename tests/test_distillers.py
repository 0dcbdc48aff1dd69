"""The distiller plugins: registered through entry points, validated parameters, what each trains on, MiniLLM's
gradient, and that each returns the student's architecture with new weights, deterministically."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from kdbench_plugins.distillers.minillm import (
    ROLLOUT,
    MiniLLMParams,
    collect_rollouts,
    minillm_loss,
    with_advantages,
)

from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import ParameterError
from kdbench.core.params import build_params
from kdbench.core.registry import get_registry
from kdbench.distill.policy_gradient import ppo_loss, token_log_probs
from kdbench.distill.strategies import GOLD, STUDENT
from kdbench.training.loop import shifted
from kdbench.training.objectives import rkl
from tests.distill_helpers import (
    job,
    prompts,
    responses,
    rig,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_model,
    token,
    weights,
)

FAST: dict[str, tuple[tuple[str, str], ...]] = {  # small budgets, so every distillation takes about a second
    "kd": (),
    "sft": (),
    "seqkd": (("max_new_tokens", "4"),),
    "gkd": (("max_new_tokens", "4"),),
    "imitkd": (("max_new_tokens", "4"),),
    "distillm": (("max_new_tokens", "4"),),
    "minillm": (("max_new_tokens", "4"), ("iterations", "4"), ("rollouts", "8"), ("init_epochs", "0")),
}


def distiller(name: str, **overrides: str) -> Any:
    info = get_registry().get("distillers", name)
    raw = tuple({**dict(FAST[name]), **overrides}.items())
    return info.cls(build_params(info.cls.Params, raw, owner=name))


def watch(d: Any) -> list[tuple[int, str, dict[str, torch.Tensor]]]:
    seen: list[tuple[int, str, dict[str, torch.Tensor]]] = []
    d.observers.append(lambda step, source, batch: seen.append((step, source, batch)))
    return seen


def count_calls(model: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda *args: calls.append(1))
    return calls


# --- registration and parameters --------------------------------------------------------------------------


def test_every_distiller_is_registered_through_its_own_entry_point() -> None:
    registry = get_registry()
    for name in FAST:
        info = registry.get("distillers", name)
        assert info.entry_point == name and info.distribution == "kdbench"
        assert info.cls.Params.__dataclass_params__.frozen


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("kd", (("temperature", "2"),), "Unknown parameter of kd 'temperature'"),
        ("kd", (("lr", "-1e-4"),), "lr=-0.0001 must be a positive"),
        ("kd", (("kd_ratio", "1.5"),), "kd_ratio=1.5 must lie in"),
        ("sft", (("epochs", "0"),), "epochs=0 must be at least 1"),
        ("seqkd", (("lr", "nan"),), "seqkd:lr: expected a number, got 'nan'."),
        ("gkd", (("lmbda", "-0.1"),), "lmbda=-0.1 must lie in"),
        ("gkd", (("beta", "2"),), "beta=2.0 must lie in"),
        ("imitkd", (("student_fraction", "1.01"),), "student_fraction=1.01"),
        ("imitkd", (("objective", "kl"),), "Unknown value for imitkd:objective 'kl'"),
        ("distillm", (("objective", "fkl"),), "distillm:objective"),
        ("distillm", (("alpha", "1.2"),), "alpha=1.2"),
        ("distillm", (("val_fraction", "1"),), "val_fraction=1.0"),
        ("minillm", (("teacher_mix", "1.5"),), "teacher_mix=1.5"),
        ("minillm", (("iterations", "0"),), "iterations=0 must be positive"),
        ("minillm", (("epochs", "3"),), "Unknown parameter of minillm 'epochs'"),
    ],
)
def test_bad_parameters_are_refused_before_any_training(name: str, raw: tuple, message: str) -> None:
    info = get_registry().get("distillers", name)
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_params(info.cls.Params, raw, owner=name)


def test_parameters_also_validate_when_built_in_python() -> None:
    params = get_registry().get("distillers", "gkd").cls.Params
    with pytest.raises(ParameterError, match="lmbda"):
        params(lmbda=float("nan"))


# --- every distiller -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAST))
def test_each_distiller_returns_the_student_architecture_with_new_weights(name: str) -> None:
    j = job()
    before = weights(j.student)
    student = distiller(name).distill(j)
    assert type(student) is type(j.student) and student.config.to_dict() == j.student.config.to_dict()
    after = weights(student)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())


@pytest.mark.parametrize("name", ["gkd", "minillm"])
def test_sampling_distillers_are_deterministic_under_a_seed(name: str) -> None:
    runs = [weights(distiller(name).distill(job(seed=seed))) for seed in (0, 0, 1)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


# --- what each trains on ----------------------------------------------------------------------------------------


def test_imitkd_trains_on_the_students_own_samples_every_step() -> None:
    x = token("name")
    d = distiller("imitkd", lr="1e-5")  # a tiny step keeps the rigged student rigged
    seen = watch(d)
    j = job(student=rig(tiny_model(2), x))
    d.distill(j)
    assert [source for _, source, _ in seen] == [STUDENT] * 4
    for _, _, batch in seen:
        assert all(r == [x] * 4 for r in responses(batch))
        assert {tuple(p) for p in prompts(batch)} <= {e.prompt_ids for e in j.data}


def test_gkd_mixes_student_samples_and_ground_truth() -> None:
    x = token("name")
    d = distiller("gkd", lr="1e-5", epochs="3")
    seen = watch(d)
    j = job(student=rig(tiny_model(2), x))
    d.distill(j)
    sources = [source for _, source, _ in seen]
    assert STUDENT in sources and GOLD in sources
    gold = {e.response_ids for e in j.data}
    for _, source, batch in seen:
        if source == STUDENT:
            assert all(r == [x] * 4 for r in responses(batch))
        else:
            assert all(tuple(r) in gold for r in responses(batch))


def test_seqkd_trains_on_teacher_samples_made_once_and_cached(tmp_path) -> None:
    y = token("phone")
    cache = ArtifactCache(tmp_path)
    teacher = rig(tiny_model(1), y)
    trained_on = []
    for run in range(2):
        d = distiller("seqkd")
        seen = watch(d)
        calls = count_calls(teacher) if run == 1 else []
        d.distill(job(teacher=teacher, cache=cache, teacher_key="t"))
        trained_on.append([tuple(r) for _, _, batch in seen for r in responses(batch)])
        assert all(r == (y,) * 4 for r in trained_on[-1])
    assert sorted(trained_on[0]) == sorted(trained_on[1])
    assert sorted(b.split("/")[0] for b in cache.builds) == ["teacher_outputs", "teacher_samples"]
    assert sorted(h.split("/")[0] for h in cache.hits) == ["teacher_outputs", "teacher_samples"]
    assert calls == []  # the second run neither sampled from nor scored with the teacher


def test_kd_runs_the_teacher_only_to_fill_its_output_cache(tmp_path) -> None:
    teacher = tiny_model(1)
    calls = count_calls(teacher)
    distiller("kd").distill(job(teacher=teacher, cache=ArtifactCache(tmp_path), teacher_key="t"))
    assert len(calls) == 1  # one batched pass over the 16 examples; none during the 4 training steps


def test_sft_never_touches_the_teacher() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"sft used the teacher ({name})")

    assert distiller("sft").distill(job(teacher=Untouchable())) is not None


def test_distillm_holds_out_validation_data_and_starts_on_ground_truth() -> None:
    d = distiller("distillm")
    seen = watch(d)
    j = job()
    d.distill(j)
    assert d.schedule is not None and d.schedule.history[0][0] == 0  # validated before training
    assert len(seen) == 4  # 15 of 16 examples train (one held out), batches of 4
    assert {source for _, source, _ in seen} == {GOLD}  # threshold 0 until validation loss rises


# --- MiniLLM ------------------------------------------------------------------------------------------------------


def test_sampling_uses_the_installed_transformers_cache_argument() -> None:
    """transformers 5 renames ``past_key_values`` to ``cache`` and warns on every call with the old name: sampling
    (rollouts, on-policy students) passes whichever name the model's forward takes, so no warning reaches users."""
    j = job(teacher=rig(tiny_model(1), token("phone")), student=rig(tiny_model(2), token("name")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        rollouts = collect_rollouts(j, [e.prompt_ids for e in j.data[:4]], MiniLLMParams(max_new_tokens=3, rollouts=4),
                                    torch.Generator().manual_seed(0))
    assert len(rollouts.sequences) == 4


def test_minillm_rollouts_come_from_the_teacher_mixed_policy_and_only_from_prompts() -> None:
    x, y = token("name"), token("phone")
    j = job(teacher=rig(tiny_model(1), y), student=rig(tiny_model(2), x))
    params = MiniLLMParams(max_new_tokens=6, rollouts=16)
    rollouts = collect_rollouts(j, [e.prompt_ids for e in j.data], params, torch.Generator().manual_seed(0))
    tokens = torch.tensor([t for s in rollouts.sequences for t in s.response_ids])
    w = torch.cat(rollouts.weights)
    assert set(tokens.tolist()) == {x, y} and 0.1 < float((tokens == y).float().mean()) < 0.3  # α = 0.2
    torch.testing.assert_close(w[tokens == x], torch.full_like(w[tokens == x], 1 / 0.8))  # q/(0.8q + 0.2·0)
    assert float(w[tokens == y].max()) < 1e-6  # q(y) ≈ 0
    d = distiller("minillm", lr="1e-5")
    seen = watch(d)
    d.distill(j)
    assert [source for _, source, _ in seen] == [ROLLOUT] * 4
    gold = {e.response_ids for e in j.data}
    assert all(set(r) <= {x, y} and tuple(r) not in gold for _, _, b in seen for r in responses(b))


def test_ppo_gradient_is_the_importance_weighted_reinforce_estimator() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 7))
    mask = torch.rand(3, 7) > 0.3
    old = token_log_probs(logits, tokens).detach()  # θ = θ_old: the ratio is the importance weight alone
    w = torch.rand(3, 7) + 0.5  # some inside [0.8, 1.2], some outside
    advantages = torch.randn(3, 7)
    ppo_loss(token_log_probs(logits, tokens), old, w, advantages, mask, clip=0.2).backward()
    # by hand: −A·w·∇log q(y) / n, except where the clip binds (A > 0 and w > 1.2, or A < 0 and w < 0.8)
    binds = ((advantages > 0) & (w > 1.2)) | ((advantages < 0) & (w < 0.8))
    coeff = torch.where(mask & ~binds, -advantages * w, 0.0) / mask.sum()
    grad_log_q = torch.nn.functional.one_hot(tokens, 11) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, coeff[..., None] * grad_log_q)


def minillm_gradients(j, batch, params: MiniLLMParams) -> dict[str, torch.Tensor]:
    j.student.zero_grad()
    minillm_loss(j, params)(j.student, batch).backward()
    return {n: p.grad.clone() for n, p in j.student.named_parameters()}


def test_minillm_gradient_comes_from_the_policy_gradient_plus_the_regulariser() -> None:
    j = job(teacher=tiny_model(1), student=tiny_model(2))
    params = MiniLLMParams(max_new_tokens=5, whiten=False)
    rollouts = collect_rollouts(j, [e.prompt_ids for e in j.data[:4]], params, torch.Generator().manual_seed(0))
    batch = with_advantages(rollouts.batch(range(4), j.pad_id), whitened=False)
    j.student.eval()  # no dropout: the same forward pass in every computation below
    forward = j.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    targets, mask = shifted(batch)

    # zero advantages: the whole gradient is the single-step reverse-KL regulariser's
    zero = with_advantages({**batch, "pg_returns": torch.zeros_like(batch["pg_returns"])}, whitened=False)
    got = minillm_gradients(j, zero, params)
    j.student.zero_grad()
    rkl(forward.logits[:, :-1], j.teacher_logits(batch)[:, :-1], mask).backward(retain_graph=True)
    for name, p in j.student.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-4)

    # no regulariser: the gradient of the REINFORCE surrogate −Σ A·w·log q(y) / n, from the rollout's A and w
    got = minillm_gradients(j, batch, MiniLLMParams(max_new_tokens=5, whiten=False, single_step_reg=False))
    assert any(float(g.abs().max()) > 0 for g in got.values())
    w, advantages = batch["pg_weights"], batch["pg_returns"]
    binds = ((advantages > 0) & (w > 1.2)) | ((advantages < 0) & (w < 0.8))
    log_q = token_log_probs(forward.logits[:, :-1], targets)
    surrogate = (torch.where(mask & ~binds, -advantages * w, 0.0) * log_q).sum() / mask.sum()
    j.student.zero_grad()
    surrogate.backward()
    for name, p in j.student.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-4)
