"""White-box needs: what only the target's weights and logits give (gradients, perturbed weights, greedy predictions).

These needs load the target model and run it outside the shared batched pass: per-sample gradient norms, passes
with noise added to the weights (and MoPe built on them), and the greedy prediction at every response position.
They are heavier than the others and need the weights in memory, so they sit apart in :class:`WhiteBox`, each
cached by model, token ids and parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from kdbench.models.perturb import perturbed
from kdbench.scoring.base import ScoringBase
from kdbench.scoring.host import cached_arrays, encoded_hash, length_sorted_stats
from kdbench.scoring.tokenstats import mean_logprob
from kdbench.training.loop import batches, collate, response_cross_entropy, to_device


class WhiteBox(ScoringBase):
    """The target's gradients, perturbed log-probabilities and greedy predictions on the samples."""

    def argmax_ids(self) -> list[np.ndarray]:
        """The target's greedy prediction at every response position ([Z]'s zlib quirk decodes these)."""

        def compute() -> dict[str, np.ndarray]:
            model, pad = self.model(), self.host.tokenizer.pad_token_id
            model.to(self.host.device).eval()
            rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(self.samples)
            with torch.no_grad():
                for idx, batch in batches(self.encoded(), self.host.batch_size, pad, generator=None):
                    batch = to_device(batch, self.host.device)
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    predicted = logits[:, :-1].argmax(-1).cpu().numpy()
                    keep = (batch["labels"][:, 1:] >= 0).cpu().numpy()
                    for row, i in enumerate(idx):
                        rows[i] = predicted[row][keep[row]]
            return _ragged(rows)

        spec = {"stage": "argmax", "model": self.target.key, "data": encoded_hash(self.encoded())}
        return self._once(("argmax",), lambda: _unragged(cached_arrays(self.host, "argmax", spec, compute)))

    def gradient_norms(self, p: float, reduce: Literal["mean", "global"]) -> np.ndarray:
        """Per sample, the p-norm of the gradient of its mean response-token loss w.r.t. all parameters:
        ``mean`` averages per-tensor norms (MIMIR), ``global`` takes the norm of all gradients together."""

        def compute() -> dict[str, np.ndarray]:
            model, pad = self.model(), self.host.tokenizer.pad_token_id
            model.to(self.host.device).eval()
            params = [q for q in model.parameters()]
            flags = [q.requires_grad for q in params]
            out = np.empty(len(self.samples))
            try:
                for q in params:
                    q.requires_grad_(True)
                with self.host.reporter.task(f"gradients of {self.target.label}", len(out)) as advance:
                    for i, e in enumerate(self.encoded()):
                        batch = to_device(collate([e], pad), self.host.device)
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                        grads = torch.autograd.grad(response_cross_entropy(logits[:, :-1], batch), params,
                                                    allow_unused=True)
                        norms = torch.stack([g.float().norm(p) for g in grads if g is not None])
                        out[i] = float(norms.mean() if reduce == "mean" else norms.norm(p))
                        advance(1)
            finally:
                for q, flag in zip(params, flags, strict=True):
                    q.requires_grad_(flag)
            return {"norms": out}

        spec = {"stage": "gradnorm", "model": self.target.key, "data": encoded_hash(self.encoded()),
                "p": p, "reduce": reduce}
        return self._once(("gradnorm", p, reduce),
                          lambda: cached_arrays(self.host, "gradnorm", spec, compute)["norms"])

    def perturbed_logprob(self, sigma: float, seed: int, block: int | None = None) -> np.ndarray:
        """Per-sample mean log-probability after adding N(0, σ²) noise (torch generator seeded ``seed``) to
        every weight, or only to transformer block ``block``'s; the weights are restored afterwards."""

        def compute() -> dict[str, np.ndarray]:
            model = self.model().to(self.host.device)
            scope = "all weights" if block is None else f"block {block}"
            with perturbed(model, sigma, seed, block):
                label = f"perturbing {self.target.label} ({scope}, seed {seed})"
                stats = length_sorted_stats(self.host, model, self.encoded(), label)
            return {"logprob": mean_logprob(stats)}

        spec = {"stage": "perturbed", "model": self.target.key, "data": encoded_hash(self.encoded()),
                "sigma": sigma, "seed": seed, "block": block}
        return self._once(("perturbed", sigma, seed, block),
                          lambda: cached_arrays(self.host, "perturbed", spec, compute)["logprob"])

    def mope(self, sigma: float, copies: int, block: int | None = None) -> np.ndarray:
        """MoPe, oriented: mean_k NLL(θ + ε_k) − NLL(θ) over seeds 1..copies (members sit in sharper minima)."""
        perturbed_mean = np.mean([self.perturbed_logprob(sigma, seed, block) for seed in range(1, copies + 1)], 0)
        return self.mean_logprob() - perturbed_mean


def _ragged(rows: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.concatenate(list(rows)) if rows else np.empty(0, dtype=np.int64)
    return {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), "values": flat}


def _unragged(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    offsets, values = arrays["offsets"], arrays["values"]
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
