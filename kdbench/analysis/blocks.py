"""Per-block privacy risk (METHODS.md §6, [Z]'s ``evaluate_mi_blimp.py``).

For each transformer block, only that block's weights get Gaussian noise (seeds 1..k); the MoPe statistic of
the loss attack (mean perturbed NLL − NLL) is then a membership score whose AUC says how much of the
model's membership signal that block carries. Blocks are found by architecture; an unknown one is refused
rather than guessed, since perturbing the wrong modules would silently measure something else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdbench.core.cache import atomic_write_text
from kdbench.core.errors import KdbenchError
from kdbench.evaluation import metrics
from kdbench.models.perturb import architecture, transformer_blocks
from kdbench.scoring.context import ScoringContext

DEFAULT_SIGMA = 0.005  # [Z]'s defaults: 5 copies, σ 0.005
DEFAULT_COPIES = 5


@dataclass(frozen=True)
class BlockRisk:
    block: int
    auc: float
    auc_ci: tuple[float, float]


def per_block_risk(
    scoring: ScoringContext,
    n_members: int,
    *,
    sigma: float = DEFAULT_SIGMA,
    copies: int = DEFAULT_COPIES,
    seed: int = 0,
    n_resamples: int = 1000,
) -> list[BlockRisk]:
    """The MoPe AUC of each block; the scoring context caches every perturbed pass, so reruns are free."""
    if copies < 1 or sigma <= 0:
        raise KdbenchError(f"Per-block risk needs copies >= 1 and sigma > 0 (got copies={copies}, sigma={sigma}).")
    risks = []
    for block in range(len(transformer_blocks(scoring.model()))):
        scores = scoring.mope(sigma, copies, block)
        members, nonmembers = scores[:n_members], scores[n_members:]
        risks.append(BlockRisk(
            block, metrics.roc_auc(members, nonmembers),
            metrics.bootstrap_auc_ci(members, nonmembers, n_resamples=n_resamples, seed=seed),
        ))
    return risks


def block_report(scoring: ScoringContext, target: str, risks: list[BlockRisk]) -> dict[str, Any]:
    """One target's entry in per_block.json."""
    return {
        "target": target,
        "label": scoring.target.label,
        "model_key": scoring.target.key,
        "architecture": architecture(scoring.model()),
        "n_blocks": len(risks),
        "per_block_auc": [r.auc for r in risks],
        "blocks": [{**asdict(r), "auc_ci": list(r.auc_ci)} for r in risks],
    }


def write_per_block(
    out: Path, reports: list[dict[str, Any]], *, sigma: float, copies: int, n_members: int, n_nonmembers: int
) -> Path:
    """OUT/per_block.json (documented in docs/results.md)."""
    data = {
        "statistic": "mope",
        "attack": "loss",
        "orientation": "mean_k NLL(θ+ε_k) − NLL(θ); higher = more likely member",
        "sigma": sigma,
        "copies": copies,
        "seeds": list(range(1, copies + 1)),
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "targets": reports,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "per_block.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
