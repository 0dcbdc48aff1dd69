"""Distillation pieces against values worked out here, not through kdbench's own functions: MiniLLM's rewards,
returns and whitening by hand on fixed inputs and recomputed from the two models' logits; GKD's loss in TRL's
convention and the kd_ratio mix; DistiLLM's adaptive schedule with a nonzero threshold; and every distiller
moving the student toward what it is meant to learn (a flipped or teacher-free loss would not)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from kdbench_plugins.distillers.gkd import gkd_loss
from kdbench_plugins.distillers.minillm import ADVANTAGES, MiniLLMParams, collect_rollouts, with_advantages

from kdbench.core.errors import KdbenchError, ParameterError
from kdbench.core.params import PluginSpec, build_params
from kdbench.core.registry import get_registry
from kdbench.core.types import Encoded
from kdbench.distill.policy_gradient import returns, rewards, whiten
from kdbench.distill.strategies import GOLD, REPLAY, STUDENT
from kdbench.models.families import get_family
from kdbench.run.plan import distiller_with_defaults
from kdbench.tasks.manifest import load_task
from kdbench.training.loop import collate
from tests.distill_helpers import (
    data,
    job,
    rig,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_model,
    token,
)

T, F = True, False


# --- MiniLLM's per-token values by hand ---------------------------------------------------------------------


def test_rewards_by_hand() -> None:
    teacher = torch.tensor([[-1.0, -2.0, -0.1]])
    student = torch.tensor([[-0.5, -3.0, -9.0]])
    mask = torch.tensor([[T, T, F]])
    # (log p − log q) / 0.5: (−1 + 0.5)/0.5 = −1, (−2 + 3)/0.5 = 2; masked position 0
    torch.testing.assert_close(rewards(teacher, student, mask, scaling=0.5), torch.tensor([[-1.0, 2.0, 0.0]]))
    torch.testing.assert_close(rewards(teacher, student, mask, scaling=0.5, clip=1.5),
                               torch.tensor([[-1.0, 1.5, 0.0]]))


def test_returns_by_hand() -> None:
    reward = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    mask = torch.tensor([[T, T, T, F], [F, T, F, F]])
    # row 0, γ = 0.5: G2 = 3, G1 = 2 + 0.5·3 = 3.5, G0 = 1 + 0.5·3.5 = 2.75; over 3, 2, 1 tokens left
    # row 1: one response token, G1 = 4 over 1
    expected = torch.tensor([[2.75 / 3, 3.5 / 2, 3.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    torch.testing.assert_close(returns(reward, mask, gamma=0.5), expected)


def test_whiten_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[T, T, T, F]])
    # mean 2, population variance 2/3 over the response positions only (the padding's 100 is not counted)
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(whiten(values, mask), torch.tensor([[-1 / s, 0.0, 1 / s, 0.0]]), atol=1e-6, rtol=1e-6)


def token_logprobs(model: Any, prompt: tuple[int, ...], response: tuple[int, ...]) -> torch.Tensor:
    """log model(y_t | prefix) of each response token, one unbatched sequence."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logq = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return logq[positions, torch.tensor(response)]


def test_minillm_rollout_values_recomputed_from_the_two_models() -> None:
    """Rewards log p − log q (teacher minus student, /0.5), γ = 0.95 discounted returns over the tokens left,
    weights q/(0.8q + 0.2p), and whitening over the minibatch's response tokens: all from the models here."""
    j = job(teacher=tiny_model(1), student=tiny_model(2))
    params = MiniLLMParams(max_new_tokens=5)
    rollouts = collect_rollouts(j, [e.prompt_ids for e in j.data[:4]], params, torch.Generator().manual_seed(0))
    j.student.eval()
    expected_returns = []
    for i, seq in enumerate(rollouts.sequences):
        log_q = token_logprobs(j.student, seq.prompt_ids, seq.response_ids)
        log_p = token_logprobs(j.teacher, seq.prompt_ids, seq.response_ids)
        r = ((log_p - log_q) / 0.5).clamp(-100, 100).tolist()
        n = len(r)
        discounted = [sum(0.95 ** (u - t) * r[u] for u in range(t, n)) / (n - t) for t in range(n)]
        expected_returns.extend(discounted)
        torch.testing.assert_close(rollouts.returns[i].double(), torch.tensor(discounted, dtype=torch.float64),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rollouts.old_logprobs[i].double(), log_q, atol=1e-5, rtol=1e-5)
        weight = log_q.exp() / (0.8 * log_q.exp() + 0.2 * log_p.exp())
        torch.testing.assert_close(rollouts.weights[i].double(), weight, atol=1e-5, rtol=1e-4)
    batch = with_advantages(rollouts.batch(range(4), j.pad_id), whitened=True)
    values = torch.tensor(expected_returns, dtype=torch.float64)
    whitened = (values - values.mean()) / values.std(correction=0)
    got = batch[ADVANTAGES][batch["labels"][:, 1:] != -100]  # row-major: each row's response tokens in order
    torch.testing.assert_close(got.double(), whitened, atol=1e-3, rtol=1e-3)


# --- GKD's loss and the kd_ratio mix --------------------------------------------------------------------------


def trl_generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's GKD loss per position, written from its definition: β·KL(p‖m) + (1 − β)·KL(q‖m), m = βp + (1 − β)q
    (p teacher, q student)."""
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
    return beta * kl_p + (1 - beta) * kl_q


@pytest.mark.parametrize("beta,kd_ratio", [(0.1, 1.0), (0.1, 0.3), (0.7, 0.6)])
def test_gkd_loss_is_trls_generalised_jsd_mixed_with_ce(beta: float, kd_ratio: float) -> None:
    j = job(teacher=tiny_model(1), student=tiny_model(2))
    batch = collate(data(4), j.pad_id)
    j.student.eval()
    with torch.no_grad():
        got = gkd_loss(j, beta, kd_ratio)(j.student, batch)
        student = j.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        teacher = j.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    jsd = trl_generalized_jsd(student.double()[mask], teacher.double()[mask], beta).mean()
    ce = -torch.log_softmax(student.double()[mask], -1).gather(-1, targets[mask].unsqueeze(-1)).mean()
    expected = (1 - kd_ratio) * ce + kd_ratio * jsd
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


# --- DistiLLM's adaptive schedule with a nonzero threshold ----------------------------------------------------


def distiller(name: str, **params: str) -> Any:
    info = get_registry().get("distillers", name)
    return info.cls(build_params(info.cls.Params, tuple(params.items()), owner=name))


def test_distillm_with_a_nonzero_threshold_mixes_fresh_samples_and_ground_truth() -> None:
    """φ = 1 from the start: step s of n samples fresh when r < 1 − (s + 1)/n, else would replay — but the
    buffer (capacity 1,000) never fills, so those draws sample fresh too; nothing is ground truth."""
    x = token("name")
    j = job(student=rig(tiny_model(2), x), epochs=2)
    d = distiller("distillm", max_new_tokens="4", init_threshold="1.0", val_fraction="0.25")
    seen: list[str] = []
    d.observers.append(lambda step, source, batch: seen.append(source))
    d.distill(j)
    assert len(seen) == 6 and set(seen) == {STUDENT}  # 12 of 16 examples train, batches of 4, two epochs
    e = distiller("distillm", max_new_tokens="4", init_threshold="0.5", capacity="4", val_fraction="0.25")
    seen.clear()
    e.observers.append(lambda step, source, batch: seen.append(source))
    e.distill(job(student=rig(tiny_model(2), x), epochs=4))
    # φ = 0.5: about half the steps use student outputs; a capacity of one batch lets replays happen
    assert GOLD in seen and STUDENT in seen and REPLAY in seen


# --- every distiller moves the student toward what it learns from -----------------------------------------------


def mean_logprob_of(model: Any, target: int) -> float:
    """The student's mean log-probability of ``target`` at the response positions of the data."""
    batch = collate(data(16), 0)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    return float(torch.log_softmax(logits[mask], -1)[:, target].mean())


FAST = {"kd": {}, "seqkd": {"max_new_tokens": "4"}, "gkd": {"max_new_tokens": "4"},
        "imitkd": {"max_new_tokens": "4"}, "distillm": {"max_new_tokens": "4"},
        "minillm": {"max_new_tokens": "4", "iterations": "16", "rollouts": "8", "lr": "3e-3"}}  # no warm start


@pytest.mark.parametrize("name", sorted(FAST))
def test_each_distiller_moves_the_student_toward_the_teacher(name: str) -> None:
    """The teacher puts ~all its mass on one token; after distillation the student gives that token more
    probability than before (a sign-flipped loss, or one that ignores the teacher, would not)."""
    y = token("phone")
    j = job(teacher=rig(tiny_model(1), y), student=tiny_model(2))
    before = mean_logprob_of(j.student, y)
    distiller(name, **FAST[name]).distill(j)
    after = mean_logprob_of(j.student, y)
    assert after > before + 0.5, (before, after)


# --- [Z]'s language-modelling term ----------------------------------------------------------------------------


def test_lm_term_adds_lm_coef_times_the_cross_entropy_on_pretraining_text() -> None:
    """One pre-training text repeated, so whichever batch is drawn it is that text: the term is lm_coef times the
    mean NLL of every token after the first, computed here from the logits."""
    text = data(1)[0]
    document = Encoded(text.input_ids[:1], text.input_ids[1:])  # the whole sequence as plain text
    j = job(teacher=tiny_model(1), student=tiny_model(2))
    j.lm_coef, j.pretrain = 0.7, [document] * 4
    batch = collate(data(4), j.pad_id)
    base = gkd_loss(j, 0.1, 1.0)
    j.student.eval()
    with torch.no_grad():
        got = j.with_lm_term(base)(j.student, batch)
        expected_base = base(j.student, batch)
        ids = torch.tensor([document.input_ids])
        logq = torch.log_softmax(j.student(input_ids=ids).logits[0, :-1].double(), -1)
    nll = -logq[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean()
    torch.testing.assert_close(got.double(), expected_base.double() + 0.7 * nll, atol=1e-5, rtol=1e-5)
    j.lm_coef = 0.0
    assert j.with_lm_term(base) is base


def test_lm_term_without_pretraining_text_is_refused() -> None:
    j = job()
    j.lm_coef = 1.0
    with pytest.raises(KdbenchError, match=r"lm_coef=1\.0 needs pre-training text"):
        j.with_lm_term(gkd_loss(j, 0.1, 1.0))
    with pytest.raises(ParameterError, match="lm_coef"):
        distiller("kd", lm_coef="-1")


def test_z_presets_sit_beneath_the_users_parameters() -> None:
    registry = get_registry()
    task = load_task("dolly")
    family = get_family("gpt2").distillers
    spec = distiller_with_defaults(registry, PluginSpec("minillm", (("lr", "1e-5"),)), task.distillers, family)
    assert dict(spec.raw) == {"lr": "1e-5", "lm_coef": "1", "iterations": "5000", "schedule": "constant",
                              "warmup_steps": "100"}  # the user's lr wins; [Z]'s constant rate after 100 steps
    assert dict(distiller_with_defaults(registry, PluginSpec("kd"), {"kd": {"bogus": 1}}, family).raw) == {"lr": "5e-5"}
    opt = get_family("opt").distillers
    assert all(values["lm_coef"] == "1" for values in opt.values())  # [Z]: the LM term for all six on OPT
    # [Z]'s scripts/model_family_6k/opt/*.sh: 5e-5 for every distiller but MiniLLM (constant 5e-6, 5,000 iterations)
    assert {name: v["lr"] for name, v in opt.items()} == {
        "kd": "5e-5", "seqkd": "5e-5", "gkd": "5e-5", "imitkd": "5e-5", "distillm": "5e-5", "minillm": "5e-6"}
    assert opt["minillm"]["schedule"] == "constant" and opt["minillm"]["iterations"] == "5000"
    # scripts/model_family_6k/llama/*.sh: kd 1e-5 and seqkd 5e-4 at kd_ratio 0.5 without the LM term; the
    # on-policy three at 5e-4 with it; MiniLLM 5e-6
    llama = get_family("llama").distillers
    assert llama["kd"] == {"lr": "1e-5", "kd_ratio": "0.5"} and llama["seqkd"] == {"lr": "5e-4", "kd_ratio": "0.5"}
    assert all(llama[name] == {"lr": "5e-4", "lm_coef": "1"} for name in ("gkd", "imitkd", "distillm"))
    assert llama["minillm"]["lr"] == "5e-6" and llama["minillm"]["lm_coef"] == "1"
    spec = distiller_with_defaults(registry, PluginSpec("kd"), {}, llama)
    assert build_params(registry.get("distillers", "kd").cls.Params, spec.raw, owner="kd").kd_ratio == 0.5
    assert {name: v["lr"] for name, v in task.distillers.items()} == {
        "kd": 5e-5, "seqkd": 5e-4, "gkd": 5e-4, "imitkd": 5e-4, "distillm": 1e-4, "minillm": 5e-6}
