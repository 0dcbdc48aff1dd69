"""MiniLLM's policy-gradient estimator of the reverse KL (Gu et al., ICLR 2024), as DistiLLM's ``minillm/``
code runs it for [Z]: per-token rewards, discounted length-normalised returns, importance weights for
rollouts drawn from a teacher-mixed policy, and the PPO-clipped surrogate. Pure tensor functions over
[batch, positions] tensors aligned with ``logits[:, :-1]`` (``mask`` marks the response positions).

Why policy gradient: KL(q‖p) summed over a sequence is an expectation under the student's own samples, so
its gradient is a REINFORCE estimator with reward log p(y_t) − log q(y_t); the single-step term (the exact
per-position KL(q‖p), :func:`kdbench.training.objectives.rkl`) is added by the distiller as a low-variance regulariser.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def token_log_probs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits) at ``tokens`` ([batch, seq, V], [batch, seq] -> [batch, seq]), float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def importance_weights(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float) -> Tensor:
    """w_t = q(y_t) / ((1 − α)·q(y_t) + α·p(y_t)): rollouts come from the mixture (1 − α)q + αp (α = 0.2 in
    MiniLLM), the estimator needs expectations under q. Exactly 1 at α = 0."""
    if alpha == 0.0:
        return torch.ones_like(student_logprobs)
    log_mix = torch.logaddexp(student_logprobs + math.log1p(-alpha), teacher_logprobs + math.log(alpha))
    return (student_logprobs - log_mix).exp()


def rewards(
    teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, scaling: float = 1.0, clip: float | None = None
) -> Tensor:
    """r_t = log p(y_t) − log q(y_t) per response token (0 elsewhere), divided by ``scaling`` and clipped to
    ±``clip`` (DistiLLM's MiniLLM scripts: scaling 0.5, clip 100)."""
    reward = (teacher_logprobs - student_logprobs) / scaling
    if clip is not None:
        reward = reward.clamp(-clip, clip)
    return torch.where(mask, reward, 0.0)


def returns(reward: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """R_t = Σ_{t' ≥ t} γ^(t'−t)·r_t' divided by the number of response tokens from t on (MiniLLM's length
    normalisation, so long responses do not dominate); 0 outside the response."""
    running = torch.zeros_like(reward[:, 0])
    out = torch.zeros_like(reward)
    for t in range(reward.shape[1] - 1, -1, -1):
        running = reward[:, t] + gamma * running
        out[:, t] = running
    remaining = mask.flip(1).cumsum(1).flip(1).clamp(min=1)
    return torch.where(mask, out / remaining, 0.0)


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean)/std over the response positions of the batch (DistiLLM whitens the advantages of each
    minibatch; it also counts padding positions, which kdbench does not)."""
    live = values[mask]
    if live.numel() == 0:
        return torch.zeros_like(values)
    var, mean = torch.var_mean(live, correction=0)
    return torch.where(mask, (values - mean) * torch.rsqrt(var + eps), 0.0)


def ppo_loss(
    logprobs: Tensor, old_logprobs: Tensor, weights: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> Tensor:
    """Mean over response tokens of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)) with ρ = w·q_θ(y_t)/q_old(y_t).

    At θ = θ_old its gradient is the importance-weighted REINFORCE estimator −A·w·∇log q_θ(y_t) for every
    token whose ρ lies inside the clip range (or on the side the clip does not bind) and 0 for the others.
    ``advantages`` and ``weights`` are constants (detached).
    """
    ratio = (logprobs - old_logprobs.detach()).exp() * weights.detach()
    advantages = advantages.detach()
    surrogate = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip, 1.0 + clip))
    return (surrogate * mask).sum() / mask.sum().clamp(min=1)
