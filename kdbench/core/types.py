"""Artifacts every stage passes along: an encoded example, a training config, a trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings ([Z]: AdamW, weight decay 0.01, cosine schedule, gradient clipping 1.0; its MiniLLM
    runs a constant rate after 100 warm-up steps). The warm-up is the longer of ``warmup_ratio`` of the steps
    and ``warmup_steps``."""

    lr: float
    epochs: int
    batch_size: int = 16
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_ratio: float = 0.0
    schedule: str = "cosine"  # or "constant" (after the warm-up)
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")


SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the prompt, then the response (ending in EOS)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.response_ids


@dataclass
class TrainedModel:
    """A model artifact in the cache: its role, cache key and directory."""

    role: str
    label: str
    key: str
    path: Path
    ref: str
