"""Per-token statistics of a model on a set of samples: ONE batched forward pass shared by every attack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded
from kdbench.training.loop import collate, shifted, to_device
from kdbench.training.memory import run_in_chunks

STAT_NAMES = ("logprob", "mean_logprob", "var_logprob")


@dataclass(frozen=True)
class TokenStats:
    """Ragged per-sample arrays over response tokens, stored flat with offsets.

    - ``logprob``: log q(x_t), the model's log-probability of the true token;
    - ``mean_logprob``: μ_t = Σ_v q_v log q_v;
    - ``var_logprob``: σ_t² = Σ_v q_v (log q_v)² − μ_t²  (Min-K%++'s normalisers).
    """

    offsets: np.ndarray  # int64, length n_samples + 1
    values: dict[str, np.ndarray]  # name -> float64 array of length offsets[-1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def per_sample(self, name: str) -> list[np.ndarray]:
        flat = self.values[name]
        return [flat[self.offsets[i] : self.offsets[i + 1]] for i in range(len(self))]

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"offsets": self.offsets, **self.values}
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> TokenStats:
        with np.load(path) as data:
            return cls(offsets=data["offsets"], values={k: data[k] for k in data.files if k != "offsets"})


def compute_token_stats(
    model: Any,
    data: Sequence[Encoded],
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int = 32,
    reporter: Reporter | None = None,
    label: str = "token statistics",
) -> TokenStats:
    """One batched forward pass over ``data``: every token-level statistic any attack needs, response tokens only."""
    reporter = reporter or NullReporter()
    model.to(device)
    model.eval()
    per_sample: dict[str, list[np.ndarray]] = {name: [np.empty(0)] * len(data) for name in STAT_NAMES}
    with torch.no_grad(), reporter.task(label, len(data)) as advance:

        def run(idx: list[int]) -> None:
            batch = to_device(collate([data[i] for i in idx], pad_id), device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets, mask = shifted(batch)
            # Response positions only: prompts are most tokens, and the vocabulary-wide work shrinks with them.
            logq = torch.log_softmax(logits[mask].float(), dim=-1)
            q_logq = logq.exp() * logq
            mean = q_logq.sum(-1)
            stats = {
                "logprob": logq.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1),
                "mean_logprob": mean,
                "var_logprob": ((q_logq * logq).sum(-1) - mean.square()).clamp(min=0.0),
            }
            counts = mask.sum(1).tolist()  # logits[mask] is row-major: each row's response tokens, in order
            found = {name: tensor.double().cpu().split(counts) for name, tensor in stats.items()}
            for name, chunks in found.items():  # stored only once the whole chunk is computed
                for i, chunk in zip(idx, chunks, strict=True):
                    per_sample[name][i] = chunk.numpy()
            advance(len(idx))

        # memory-aware: a chunk that does not fit is redone in halves (the statistics are per row)
        run_in_chunks(len(data), batch_size, run, device=device, label=label, reporter=reporter,
                      width=lambda i: len(data[i].input_ids))
    lengths = np.array([len(v) for v in per_sample["logprob"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = {name: np.concatenate(arrays) if arrays else np.empty(0) for name, arrays in per_sample.items()}
    return TokenStats(offsets=offsets, values=values)


def mean_logprob(stats: TokenStats) -> np.ndarray:
    """Per-sample mean response-token log-probability (= −loss)."""
    return np.array([float(lp.mean()) for lp in stats.per_sample("logprob")])


def lowest_k(values: np.ndarray, k: float) -> float:
    """The mean of the lowest ``k`` fraction of ``values``, at least one of them (MIMIR's Min-K% and Min-K%++
    rule: ``max(1, int(len(values) * k))`` values)."""
    n = max(1, int(len(values) * k))
    return float(np.sort(values)[:n].mean())
