"""kdbench.training.objectives against closed forms computed here, independently, in float64 numpy.

Distributions are hand-made over 3–5 tokens; the teacher goes in as log-probabilities and the student as
shifted log-probabilities (logits are only defined up to a constant), so each test also checks that shift.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from kdbench.core.errors import ParameterError, UnknownNameError
from kdbench.training.objectives import (
    LOG_PROB_FLOOR,
    OBJECTIVES,
    TAIL_FLOOR,
    TopKLogProbs,
    fkl,
    get_objective,
    jsd,
    jsd_from_trl_beta,
    per_token,
    rkl,
    sfkl,
    srkl,
    tvd,
)

# --- independent closed forms (float64 numpy) --------------------------------------------------------------


def np_kl(a: np.ndarray, b: np.ndarray) -> float:
    live = a > 0
    return float(np.sum(a[live] * np.log(a[live] / b[live])))


def np_entropy(p: np.ndarray) -> float:
    live = p > 0
    return float(-np.sum(p[live] * np.log(p[live])))


def np_fkl(p: np.ndarray, q: np.ndarray) -> float:
    live = p > 0
    return float(-np.sum(p[live] * np.log(q[live])))


def np_rkl(p: np.ndarray, q: np.ndarray) -> float:
    return np_kl(q, p)


def np_jsd(p: np.ndarray, q: np.ndarray, lmbda: float = 0.9) -> float:
    m = (1 - lmbda) * p + lmbda * q
    return lmbda * np_kl(q, m) + (1 - lmbda) * np_kl(p, m)


def np_tvd(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def np_sfkl(p: np.ndarray, q: np.ndarray, alpha: float = 0.1) -> float:
    return np_fkl(p, alpha * p + (1 - alpha) * q)


def np_srkl(p: np.ndarray, q: np.ndarray, alpha: float = 0.1) -> float:
    return np_kl(q, (1 - alpha) * p + alpha * q)


def np_trl_generalized_jsd(p: np.ndarray, q: np.ndarray, beta: float) -> float:
    """TRL / GKD-paper convention: M = βp + (1−β)q, β·KL(p‖M) + (1−β)·KL(q‖M) (0 at both end-points)."""
    m = beta * p + (1 - beta) * q
    return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)


CLOSED_FORMS: dict[str, Callable[..., float]] = {
    "fkl": np_fkl,
    "rkl": np_rkl,
    "jsd": np_jsd,
    "tvd": np_tvd,
    "sfkl": np_sfkl,
    "srkl": np_srkl,
}

CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {}),
    ("jsd", {"lmbda": 0.5}),
    ("jsd", {"lmbda": 0.2}),
    ("tvd", {}),
    ("sfkl", {}),
    ("sfkl", {"alpha": 0.4}),
    ("srkl", {}),
    ("srkl", {"alpha": 0.4}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]

# Three positions over a 4-token vocabulary: (teacher p, student q).
P = np.array([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01], [0.4, 0.4, 0.1, 0.1]])
Q = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.4, 0.1, 0.4, 0.1]])


def teacher_of(p: np.ndarray) -> torch.Tensor:
    """[1, n, V] teacher log-probabilities (zeros become -inf, which the objectives must accept)."""
    with np.errstate(divide="ignore"):
        return torch.tensor(np.log(p), dtype=torch.float32).reshape(1, -1, p.shape[-1])


def student_of(q: np.ndarray, shift: float = 3.7) -> torch.Tensor:
    """[1, n, V] student logits: log q plus a constant, leaf tensor with gradients."""
    logits = torch.tensor(np.log(q) + shift, dtype=torch.float32).reshape(1, -1, q.shape[-1])
    return logits.requires_grad_(True)


def all_on(n: int) -> torch.Tensor:
    return torch.ones(1, n, dtype=torch.bool)


# --- closed forms --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_matches_closed_form(name: str, kw: dict[str, float]) -> None:
    expected = [CLOSED_FORMS[name](p, q, **kw) for p, q in zip(P, Q, strict=True)]
    loss = get_objective(name)(student_of(Q), teacher_of(P), all_on(3), **kw)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-5)
    values = per_token(name, student_of(Q), teacher_of(P), **kw)
    assert values.shape == (1, 3)
    np.testing.assert_allclose(values[0].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_identical_distributions() -> None:
    p = np.array([[0.5, 0.25, 0.25]])
    h = 1.5 * math.log(2)  # entropy of (1/2, 1/4, 1/4), by hand
    s, t, m = student_of(p), teacher_of(p), all_on(1)
    assert fkl(s, t, m).item() == pytest.approx(h, rel=1e-6)
    assert sfkl(s, t, m).item() == pytest.approx(h, rel=1e-6)  # m = p when q = p
    for loss in (rkl, jsd, tvd, srkl):
        assert loss(s, t, m).item() == pytest.approx(0.0, abs=1e-6)


def test_disjoint_supports_are_finite() -> None:
    # p = (1, 0, 0) with exact zeros; q has (numerically) no mass on token 0 and half on each of the others.
    teacher = torch.tensor([[[0.0, -math.inf, -math.inf]]])
    student = torch.tensor([[[-1e4, 0.0, 0.0]]], requires_grad=True)
    mask = all_on(1)
    lam, alpha = 0.9, 0.1
    expected = {
        "tvd": 1.0,
        "fkl": 1e4 + math.log(2),  # −log q_0 = 1e4 + log 2
        # m puts λ·q on tokens 1, 2 and (1−λ)·p on token 0: KL(q‖m) = log 1/λ, KL(p‖m) = log 1/(1−λ).
        "jsd": -lam * math.log(lam) - (1 - lam) * math.log(1 - lam),
        "sfkl": -math.log(alpha),  # m_0 = α
        "srkl": -math.log(alpha),  # m = α·q on q's support
        "rkl": -math.log(2) - LOG_PROB_FLOOR,  # log(q/p) with p floored where it is 0
    }
    for name, value in expected.items():
        loss = get_objective(name)(student, teacher, mask)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name
        assert loss.item() == pytest.approx(value, rel=1e-5), name


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_extreme_logits_give_finite_values_and_gradients(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    student = (1e4 * torch.randn(2, 5, 4, generator=gen)).requires_grad_(True)
    teacher = 1e4 * torch.randn(2, 5, 4, generator=gen)
    teacher[0, 0, :2] = -math.inf  # zero teacher mass, too
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss = get_objective(name)(student, teacher, mask)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and loss.item() >= 0
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_vocab_padding_with_minus_inf_in_both_is_ignored(name: str, kw: dict[str, float]) -> None:
    # Padded vocabulary slots (-inf for teacher AND student) hold no mass: 0·log 0 = 0, also in the gradient.
    s, t = student_of(Q), teacher_of(P)
    pad = torch.full((1, 3, 2), -math.inf)
    s_pad = torch.cat([s.detach(), pad], dim=-1).requires_grad_(True)
    loss = get_objective(name)(s_pad, torch.cat([t, pad], dim=-1), all_on(3), **kw)
    (grad,) = torch.autograd.grad(loss, s_pad)
    assert loss.item() == pytest.approx(get_objective(name)(s, t, all_on(3), **kw).item(), rel=1e-6)
    assert torch.isfinite(grad).all() and (grad[..., 4:] == 0).all()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_teacher_logits_log_probs_and_low_precision_student_agree(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 5, generator=gen), 3 * torch.randn(2, 3, 5, generator=gen)
    mask = torch.ones(2, 3)
    ref = get_objective(name)(student, teacher, mask)
    assert get_objective(name)(student, teacher.log_softmax(-1), mask).item() == pytest.approx(ref.item())
    assert get_objective(name)(student, teacher + 7.0, mask).item() == pytest.approx(ref.item(), rel=1e-5)
    low = get_objective(name)(student.bfloat16(), teacher.bfloat16(), mask)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(ref.item(), rel=0.05, abs=1e-3)


# --- masking -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_mask_averages_over_response_tokens_only(name: str, kw: dict[str, float]) -> None:
    # Two sequences over the three (p, q) pairs: sequence 0 has one response token, sequence 1 has two, so
    # a per-token mean differs from a mean of per-sequence means.
    p = np.stack([P, P[[1, 2, 0]]])
    q = np.stack([Q, Q[[1, 2, 0]]])
    mask = torch.tensor([[False, True, False], [True, False, True]])
    per_pos = np.array([[CLOSED_FORMS[name](p[b, i], q[b, i], **kw) for i in range(3)] for b in range(2)])
    expected = per_pos[mask.numpy()].mean()
    student = torch.tensor(np.log(q), dtype=torch.float32, requires_grad=True)
    teacher = torch.tensor(np.log(p), dtype=torch.float32)
    loss = get_objective(name)(student, teacher, mask, **kw)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert get_objective(name)(student, teacher, mask.long(), **kw).item() == pytest.approx(loss.item())

    # Anything at prompt/padding positions, even an all -inf teacher row, changes neither loss nor gradient.
    (grad,) = torch.autograd.grad(loss, student)
    student2 = (student.detach() + 100 * (~mask).unsqueeze(-1) * torch.randn(2, 3, 4)).requires_grad_(True)
    teacher2 = teacher.clone()
    teacher2[0, 0] = -math.inf
    teacher2[1, 1] = torch.tensor([50.0, -50.0, 3.0, 0.0])
    loss2 = get_objective(name)(student2, teacher2, mask, **kw)
    (grad2,) = torch.autograd.grad(loss2, student2)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(grad2, grad)
    assert (grad2[~mask] == 0).all()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_no_response_tokens_gives_zero(name: str) -> None:
    student = torch.randn(2, 3, 4, requires_grad=True)
    loss = get_objective(name)(student, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad is not None and (student.grad == 0).all()


def test_shape_mismatches_are_refused() -> None:
    student = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="mask"):
        fkl(student, torch.randn(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="teacher"):
        fkl(student, torch.randn(2, 3, 5), torch.ones(2, 3))


# --- TRL's generalized JSD -----------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_trl_convention(beta: float) -> None:
    expected = np.mean([np_trl_generalized_jsd(p, q, beta) for p, q in zip(P, Q, strict=True)])
    s, t, m = student_of(Q), teacher_of(P), all_on(3)
    assert jsd(s, t, m, lmbda=jsd_from_trl_beta(beta)).item() == pytest.approx(expected, rel=1e-5)
    if beta != 0.5:  # the mapping is not the identity: using β as λ gives a different number
        assert jsd(s, t, m, lmbda=beta).item() != pytest.approx(expected)


def test_trl_end_points() -> None:
    s, t, m = student_of(Q), teacher_of(P), all_on(3)
    forward_kl = np.mean([np_kl(p, q) for p, q in zip(P, Q, strict=True)])  # TRL's β = 0 special case
    reverse_kl = np.mean([np_kl(q, p) for p, q in zip(P, Q, strict=True)])  # TRL's β = 1 special case
    entropy = np.mean([np_entropy(p) for p in P])
    assert fkl(s, t, m).item() - entropy == pytest.approx(forward_kl, rel=1e-5)
    assert rkl(s, t, m).item() == pytest.approx(reverse_kl, rel=1e-5)
    # The formula itself degenerates to 0 at the end-points (why TRL special-cases them) ...
    assert jsd_from_trl_beta(0.0) == 1.0 and jsd_from_trl_beta(1.0) == 0.0
    for beta in (0.0, 1.0):
        assert jsd(s, t, m, lmbda=jsd_from_trl_beta(beta)).item() == pytest.approx(0.0, abs=1e-6)
    # ... and near them it is the end-point KL scaled by the distance to the end-point.
    eps = 1e-3
    assert jsd(s, t, m, lmbda=jsd_from_trl_beta(eps)).item() / eps == pytest.approx(forward_kl, rel=0.01)
    assert jsd(s, t, m, lmbda=jsd_from_trl_beta(1 - eps)).item() / eps == pytest.approx(reverse_kl, rel=0.01)


def test_mixture_parameters_are_checked() -> None:
    s, t, m = student_of(Q), teacher_of(P), all_on(3)
    with pytest.raises(ParameterError, match="beta"):
        jsd_from_trl_beta(1.5)
    with pytest.raises(ParameterError, match="lmbda"):
        jsd(s, t, m, lmbda=-0.1)
    with pytest.raises(ParameterError, match="alpha"):
        srkl(s, t, m, alpha=float("nan"))


def test_skewed_end_points() -> None:
    s, t, m = student_of(Q), teacher_of(P), all_on(3)
    assert sfkl(s, t, m, alpha=0.0).item() == pytest.approx(fkl(s, t, m).item())
    assert srkl(s, t, m, alpha=0.0).item() == pytest.approx(rkl(s, t, m).item())
    assert srkl(s, t, m, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


# --- top-k teacher -------------------------------------------------------------------------------------


def test_topk_reconstruction_by_hand() -> None:
    p = np.array([[0.04, 0.5, 0.06, 0.3, 0.1]])
    full = TopKLogProbs.from_logits(teacher_of(p), k=2).log_probs(5).exp()
    tail = 0.2 / 3  # 1 − 0.5 − 0.3 spread over the three other tokens
    np.testing.assert_allclose(full.reshape(-1).numpy(), [tail, 0.5, tail, 0.3, tail], rtol=1e-6)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_topk_with_k_equal_vocab_is_exact(name: str, kw: dict[str, float]) -> None:
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 3, 5, generator=gen), 2 * torch.randn(2, 3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    full = get_objective(name)(student, teacher, mask, **kw)
    top = get_objective(name)(student, TopKLogProbs.from_logits(teacher, k=5), mask, **kw)
    assert top.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-7)


def test_topk_error_is_bounded_by_the_tail_mass() -> None:
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(4, 6, 5, generator=gen), 2 * torch.randn(4, 6, 5, generator=gen)
    top = TopKLogProbs.from_logits(teacher, k=2)
    p, p_k = teacher.softmax(-1), top.log_probs(5).exp()
    tail = 1 - top.logprobs.exp().sum(-1)
    torch.testing.assert_close(p_k.sum(-1), torch.ones(4, 6))
    torch.testing.assert_close(p_k.gather(-1, top.indices), p.gather(-1, top.indices))
    assert (0.5 * (p - p_k).abs().sum(-1) <= tail + 1e-6).all()  # TVD(p, p_k) ≤ tail mass
    assert tail.max() > 0.05  # the bound below is not vacuous
    # |tvd(q, p_k) − tvd(q, p)| ≤ TVD(p, p_k); |fkl(q, p_k) − fkl(q, p)| ≤ TVD(p, p_k)·range(log q).
    log_q = student.log_softmax(-1)
    d_tvd = per_token("tvd", student, top) - per_token("tvd", student, teacher)
    d_fkl = per_token("fkl", student, top) - per_token("fkl", student, teacher)
    assert (d_tvd.abs() <= tail + 1e-6).all()
    assert (d_fkl.abs() <= tail * (log_q.max(-1).values - log_q.min(-1).values) + 1e-5).all()
    assert d_fkl.abs().max() > 1e-3  # and the reconstruction is not silently the full teacher


def test_topk_with_no_tail_mass_stays_finite() -> None:
    p = np.array([[0.6, 0.4, 0.0, 0.0]])
    teacher = TopKLogProbs.from_logits(teacher_of(p), k=2)
    student = student_of(np.array([[0.1, 0.2, 0.3, 0.4]]))
    for name in OBJECTIVES:
        loss = get_objective(name)(student, teacher, all_on(1))
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


# --- gradients -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_gradient_reaches_the_student_only(name: str) -> None:
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    top = TopKLogProbs.from_logits(teacher, k=3)
    top = TopKLogProbs(top.indices, top.logprobs.clone().requires_grad_(True))
    for t in (teacher, top):
        loss = get_objective(name)(student, t, torch.ones(2, 3))
        loss.backward()
    assert teacher.grad is None and top.logprobs.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_fkl_and_rkl_gradients_match_closed_form() -> None:
    # d/dz fkl = (q − p)/N;  d/dz KL(q‖p) = q ⊙ (log q − log p − KL(q‖p))/N, N = 3 masked positions.
    s, t = student_of(Q), teacher_of(P)
    (g_f,) = torch.autograd.grad(fkl(s, t, all_on(3)), s)
    np.testing.assert_allclose(g_f[0].numpy(), (Q - P) / 3, atol=1e-6)
    (g_r,) = torch.autograd.grad(rkl(s, t, all_on(3)), s)
    kl = np.array([[np_kl(q, p)] for p, q in zip(P, Q, strict=True)])
    np.testing.assert_allclose(g_r[0].numpy(), Q * (np.log(Q) - np.log(P) - kl) / 3, atol=1e-6)


# --- registry ------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(OBJECTIVES) == {"fkl", "rkl", "jsd", "tvd", "sfkl", "srkl"}
    assert get_objective("srkl") is srkl
    with pytest.raises(UnknownNameError, match="Did you mean 'srkl'"):
        get_objective("srk")
    with pytest.raises(UnknownNameError):
        per_token("kl", torch.zeros(1, 1, 3), torch.zeros(1, 1, 3))


def test_topk_with_per_position_counts_spreads_each_position_s_own_tail() -> None:
    """Position 0 keeps 1 token, position 1 keeps 3 (its slots past the count repeat the last token): the
    distribution, by hand, is the kept probabilities plus the left-out mass spread over the V − count others."""
    logp = torch.log(torch.tensor([[[0.7, 0.7, 0.7], [0.5, 0.2, 0.1]]]))
    top = TopKLogProbs(torch.tensor([[[3, 3, 3], [1, 4, 0]]]), logp, counts=torch.tensor([[1, 3]]))
    want = torch.tensor([[[0.3 / 4, 0.3 / 4, 0.3 / 4, 0.7, 0.3 / 4], [0.1, 0.5, 0.2 / 2, 0.2 / 2, 0.2]]])
    torch.testing.assert_close(top.log_probs(5).exp(), want)


def test_a_tail_rounded_away_keeps_a_floor_so_no_token_is_impossible() -> None:
    top = TopKLogProbs(torch.tensor([[[2, 2]]]), torch.zeros(1, 1, 2), counts=torch.tensor([[1]]))  # p = 1 stored
    p = top.log_probs(4).exp()[0, 0]
    assert float(p.min()) == pytest.approx(TAIL_FLOOR / 3) and float(p.sum()) == pytest.approx(1.0, abs=2e-6)
