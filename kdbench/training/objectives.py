"""Token-level distillation objectives: DistiLLM's loss zoo (METHODS.md §2), in float32 log space.

p is the teacher's next-token distribution, q the student's, at one position. Every loss is a per-position
value averaged over the RESPONSE positions of ``mask`` only (prompt and padding never count; no response
positions gives 0, not NaN), so a sequence counts in proportion to its response tokens, as in DistiLLM.

Why log space: LM logits are large and teacher distributions sparse, and probability-space code (softmax, then
log) turns that into 0·log 0 = NaN or log 0 = -inf, which poisons a training run silently. Hence:

- log-probabilities come from ``log_softmax`` in float32, whatever the input dtype;
- mixtures (jsd, sfkl, srkl) are formed with ``logaddexp`` of log-weights, never ``log(a + b)``;
- a term whose probability weight is exactly 0 is 0 (0·log 0 = 0), in the forward AND the backward pass;
- the divisor of a KL, ``b`` in KL(a‖b), is floored at float32's smallest normal number (``LOG_PROB_FLOOR``,
  e^-87.3): where the teacher has (numerically) no mass and the student has some, KL(q‖p) stays finite and its
  gradient bounded, instead of growing with the logit scale (teacher logits ±1e4 and ±1e3 both mean p = 0).
  Real LM teachers rarely put log p below -87, so the floor changes nothing there.

The teacher is always detached: gradients reach ``student_logits`` only. It may be given as logits, as
log-probabilities (``log_softmax`` is idempotent on them; -inf marks zero mass), or as ``TopKLogProbs``.
Student logits must be finite wherever the teacher has mass (fkl is +inf otherwise, as it should be).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kdbench.core.errors import ParameterError, UnknownNameError

LOG_PROB_FLOOR: float = math.log(torch.finfo(torch.float32).tiny)
"""Smallest log-probability a KL divisor may take: log of float32's smallest normal number (≈ -87.34)."""


@dataclass(frozen=True)
class TopKLogProbs:
    """A teacher stored as its k most likely tokens per position, e.g. cached to save disk and memory.

    The mass 1 − Σ exp(logprobs) left to the other V − k tokens is unknown in detail; ``log_probs`` spreads it
    uniformly over them: the maximum-entropy completion, which keeps every token possible while any tail mass
    is left, and is exact when k = V. Its total-variation distance to the true p is at most that tail mass.
    """

    indices: Tensor  # [batch, seq, k] long; distinct within a position (as torch.topk returns them)
    logprobs: Tensor  # [batch, seq, k] float: log p of those tokens
    counts: Tensor | None = None
    """[batch, seq]: tokens stored per position when positions keep different numbers (slots past a position's
    count repeat its last token and log p, and are not counted); None: all k."""

    def __post_init__(self) -> None:
        if self.indices.shape != self.logprobs.shape:
            raise ValueError(
                f"TopKLogProbs: indices {tuple(self.indices.shape)} and logprobs "
                f"{tuple(self.logprobs.shape)} must have the same shape."
            )
        if self.counts is not None and self.counts.shape != self.indices.shape[:-1]:
            raise ValueError(
                f"TopKLogProbs: counts {tuple(self.counts.shape)} must match the positions "
                f"{tuple(self.indices.shape[:-1])}."
            )

    @classmethod
    def from_logits(cls, logits: Tensor, k: int) -> TopKLogProbs:
        """Keep the k most likely tokens of teacher ``logits`` [..., vocab]."""
        logprobs, indices = torch.log_softmax(logits.detach().float(), dim=-1).topk(k, dim=-1)
        return cls(indices=indices, logprobs=logprobs)

    def log_probs(self, vocab_size: int) -> Tensor:
        """Full [..., vocab_size] log p: the top k as stored, the tail mass spread evenly over the rest."""
        k = self.indices.shape[-1]
        if k > vocab_size:
            raise ValueError(f"TopKLogProbs: k = {k} exceeds the vocabulary size {vocab_size}.")
        logprobs = self.logprobs.detach().float()
        if self.counts is None:
            log_top_mass = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp_max(0.0)
            if k < vocab_size:
                fill = _log1mexp(log_top_mass) - math.log(vocab_size - k)
            else:
                fill = torch.full_like(log_top_mass, -math.inf)  # every slot is overwritten below
        else:
            counts = self.counts.unsqueeze(-1)
            stored = torch.arange(k, device=logprobs.device) < counts
            log_top_mass = torch.logsumexp(logprobs.masked_fill(~stored, -math.inf), dim=-1, keepdim=True)
            rest = (vocab_size - counts).clamp_min(1).float()
            # a tail rounded away (16-bit storage of a peaked position) keeps TAIL_FLOOR, so no token is impossible
            log_tail = _log1mexp(log_top_mass.clamp_max(math.log1p(-TAIL_FLOOR)))
            fill = torch.where(counts < vocab_size, log_tail - rest.log(), -math.inf)  # -inf: all overwritten
        full = fill.expand(*logprobs.shape[:-1], vocab_size).clone()
        return full.scatter(-1, self.indices, logprobs)


Teacher = Tensor | TopKLogProbs
TAIL_FLOOR = 1e-6
"""Least tail mass of a position stored with per-position counts but not whole (see ``TopKLogProbs.counts``)."""


# --- per-position values: (log q [..., V], log p [..., V]) -> [...] ---------------------------------------


def _fkl_tokens(log_q: Tensor, log_p: Tensor) -> Tensor:
    return _cross_entropy(log_p, log_q)


def _rkl_tokens(log_q: Tensor, log_p: Tensor) -> Tensor:
    return _kl(log_q, log_p)


def _jsd_tokens(log_q: Tensor, log_p: Tensor, lmbda: float = 0.9) -> Tensor:
    lmbda = _unit("lmbda", lmbda)
    log_m = _log_mix(1.0 - lmbda, log_p, log_q)  # m = (1-λ)p + λq
    return lmbda * _kl(log_q, log_m) + (1.0 - lmbda) * _kl(log_p, log_m)


def _tvd_tokens(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


def _sfkl_tokens(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    alpha = _unit("alpha", alpha)
    return _cross_entropy(log_p, _log_mix(alpha, log_p, log_q))  # m = αp + (1-α)q


def _srkl_tokens(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    alpha = _unit("alpha", alpha)
    return _kl(log_q, _log_mix(1.0 - alpha, log_p, log_q))  # m = (1-α)p + αq


_PER_TOKEN: dict[str, Callable[..., Tensor]] = {
    "fkl": _fkl_tokens,
    "rkl": _rkl_tokens,
    "jsd": _jsd_tokens,
    "tvd": _tvd_tokens,
    "sfkl": _sfkl_tokens,
    "srkl": _srkl_tokens,
}


# --- public, masked-mean losses ------------------------------------------------------------------------


def fkl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor) -> Tensor:
    """Forward KD, −Σ_v p log q: cross-entropy to the teacher; KL(p‖q) plus the teacher's entropy, so the same
    gradient (mass-covering: q is pushed up wherever p has mass)."""
    return _masked_mean(_fkl_tokens, student_logits, teacher_logits, mask)


def rkl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor) -> Tensor:
    """Reverse KL, KL(q‖p) = Σ_v q (log q − log p): mode-seeking, MiniLLM's objective."""
    return _masked_mean(_rkl_tokens, student_logits, teacher_logits, mask)


def jsd(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor, lmbda: float = 0.9) -> Tensor:
    """DistiLLM's generalised JSD: m = (1−λ)p + λq, λ·KL(q‖m) + (1−λ)·KL(p‖m); bounded by log 2 for λ = ½.

    λ = 0.9 is what DistiLLM and [Z]'s GKD arm use. ``jsd_from_trl_beta`` converts TRL's β to this λ.
    """
    return _masked_mean(_jsd_tokens, student_logits, teacher_logits, mask, lmbda=lmbda)


def tvd(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor) -> Tensor:
    """Total variation, ½ Σ_v |p − q|: symmetric and bounded in [0, 1]."""
    return _masked_mean(_tvd_tokens, student_logits, teacher_logits, mask)


def sfkl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor, alpha: float = 0.1) -> Tensor:
    """Skew forward KL (DistiLLM): m = αp + (1−α)q, −Σ_v p log m; the α·p share keeps log m finite where
    q ≈ 0, which stabilises the gradient. α = 0 is fkl."""
    return _masked_mean(_sfkl_tokens, student_logits, teacher_logits, mask, alpha=alpha)


def srkl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor, alpha: float = 0.1) -> Tensor:
    """Skew reverse KL (DistiLLM): m = (1−α)p + αq, KL(q‖m); the α·q share bounds the log-ratio by log(1/α)
    where p ≈ 0. α = 0 is rkl."""
    return _masked_mean(_srkl_tokens, student_logits, teacher_logits, mask, alpha=alpha)


OBJECTIVES: dict[str, Callable[..., Tensor]] = {
    "fkl": fkl,
    "rkl": rkl,
    "jsd": jsd,
    "tvd": tvd,
    "sfkl": sfkl,
    "srkl": srkl,
}


def get_objective(name: str) -> Callable[..., Tensor]:
    """The loss called ``name``; an unknown name raises an error that lists the available ones."""
    if name not in OBJECTIVES:
        raise UnknownNameError("objective", name, OBJECTIVES)
    return OBJECTIVES[name]


def per_token(name: str, student_logits: Tensor, teacher_logits: Teacher, **kw: float) -> Tensor:
    """Unreduced [batch, seq] values of objective ``name`` at every position (no mask): tests, analysis."""
    if name not in _PER_TOKEN:
        raise UnknownNameError("objective", name, _PER_TOKEN)
    _check_shapes(student_logits, teacher_logits)
    log_q = _student_log_probs(student_logits)
    return _PER_TOKEN[name](log_q, _teacher_log_probs(teacher_logits, log_q.shape[-1]), **kw)


def jsd_from_trl_beta(beta: float) -> float:
    """The λ for which kdbench's ``jsd`` equals TRL's ``GKDTrainer.generalized_jsd_loss(beta=β)``: λ = 1 − β.

    TRL (since huggingface/trl#3043, March 2025; earlier releases mixed the weights the other way round)
    follows the GKD paper: M = β·p + (1−β)·q and JSD(β) = β·KL(p‖M) + (1−β)·KL(q‖M), averaged over the
    tokens whose label is not -100. kdbench's m = (1−λ)p + λq with λ·KL(q‖m) + (1−λ)·KL(p‖m) is term for
    term the same once λ = 1 − β; DistiLLM's λ = 0.9 is TRL's β = 0.1.

    End-points. At β = 0 TRL computes the forward KL(p‖q) and at β = 1 the reverse KL(q‖p), but only as
    special cases: the formula itself is identically 0 there (β = 0 makes M = q, so KL(q‖M) = 0 and KL(p‖M)
    has weight 0; symmetrically for β = 1), and near them it merely scales a KL: JSD(β) ≈ β·KL(p‖q) as β → 0
    and ≈ (1−β)·KL(q‖p) as β → 1. kdbench does not special-case: ``jsd`` at λ = 1 (β = 0) and at λ = 0
    (β = 1) is exactly 0, with zero gradient. To get TRL's end-points use ``fkl`` for β = 0 (fkl = KL(p‖q) +
    H(p), and the teacher's entropy H(p) does not depend on the student, so the gradients are equal) and
    ``rkl`` for β = 1. A β outside [0, 1] raises ``ParameterError``.
    """
    return 1.0 - _unit("beta", beta)


# --- helpers -------------------------------------------------------------------------------------------


def _masked_mean(
    tokens: Callable[..., Tensor], student_logits: Tensor, teacher: Teacher, mask: Tensor, **kw: float
) -> Tensor:
    """Mean of ``tokens`` over the masked positions only; computed on those rows, so garbage elsewhere
    (padding, an all -inf teacher row) can neither leak in nor put NaN into the gradient."""
    _check_shapes(student_logits, teacher)
    if mask.shape != student_logits.shape[:-1]:
        want = tuple(student_logits.shape[:-1])
        raise ValueError(f"mask {tuple(mask.shape)} must match the logits' [batch, seq] {want}.")
    keep = mask.bool()
    log_q = _student_log_probs(student_logits[keep])
    if isinstance(teacher, TopKLogProbs):
        counts = None if teacher.counts is None else teacher.counts[keep]
        teacher = TopKLogProbs(indices=teacher.indices[keep], logprobs=teacher.logprobs[keep], counts=counts)
    else:
        teacher = teacher[keep]
    values = tokens(log_q, _teacher_log_probs(teacher, log_q.shape[-1]), **kw)
    return values.sum() / keep.sum().clamp_min(1)


def _check_shapes(student_logits: Tensor, teacher: Teacher) -> None:
    got = teacher.indices.shape[:-1] if isinstance(teacher, TopKLogProbs) else teacher.shape
    want = student_logits.shape[:-1] if isinstance(teacher, TopKLogProbs) else student_logits.shape
    if got != want:
        raise ValueError(f"teacher shape {tuple(got)} does not match the student's {tuple(want)}.")


def _student_log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def _teacher_log_probs(teacher: Teacher, vocab_size: int) -> Tensor:
    with torch.no_grad():
        full = teacher.log_probs(vocab_size) if isinstance(teacher, TopKLogProbs) else teacher.float()
        return torch.log_softmax(full, dim=-1)


def _expect(log_w: Tensor, values: Tensor) -> Tensor:
    """Σ_v w_v·values_v with w = exp(log_w); a zero-weight term is 0 even where ``values`` is ±inf or NaN, and
    its gradient is 0 too (the ``where`` sits before the product, so no 0·inf is ever formed)."""
    w = log_w.exp()
    return (w * torch.where(w > 0, values, 0.0)).sum(dim=-1)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a‖b) per position, the divisor b floored at ``LOG_PROB_FLOOR``."""
    return _expect(log_a, log_a - log_b.clamp_min(LOG_PROB_FLOOR))


def _cross_entropy(log_a: Tensor, log_b: Tensor) -> Tensor:
    """−Σ_v a log b per position (no floor: b is the student's, whose gradient must survive)."""
    return -_expect(log_a, log_b)


def _log_mix(w_a: float, log_a: Tensor, log_b: Tensor) -> Tensor:
    """log(w_a·a + (1−w_a)·b); exactly log a or log b at the end-points, and where a = b = 0 it is -inf with a
    zero (not NaN) gradient, because logaddexp never sees two -inf."""
    if w_a == 1.0:
        return log_a
    if w_a == 0.0:
        return log_b
    x, y = log_a + math.log(w_a), log_b + math.log1p(-w_a)
    dead = torch.isneginf(x) & torch.isneginf(y)
    mixed = torch.logaddexp(torch.where(dead, 0.0, x), torch.where(dead, 0.0, y))
    return torch.where(dead, -math.inf, mixed)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x ≤ 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _unit(name: str, value: float) -> float:
    """A mixture weight, checked to lie in [0, 1] (NaN fails too)."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ParameterError(f"{name} must lie in [0, 1] (it is a mixture weight); got {value!r}.")
    return value
