"""Learning-rate schedules of the training loop: cosine (every recipe's default) and [Z]'s MiniLLM constant rate
after a warm-up, against their closed forms; and a distiller's schedule override reaching the loop."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from kdbench.core.types import TrainConfig
from kdbench.training.loop import LoopSettings, batches, sft_loss, train_steps
from tests.distill_helpers import data, job, single_thread, tiny_model, tokenizer  # noqa: F401 - autouse fixture


class RecordRates:
    """An optimizer hook whose scheduler notes the rate each optimiser step ran at (read before it moves on)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def __call__(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        recorder = self

        class Noted:
            def step(self) -> None:
                recorder.rates.append(optimizer.param_groups[0]["lr"])
                scheduler.step()

        return model, optimizer, Noted()


def rates(config: TrainConfig, steps: int) -> list[float]:
    hook = RecordRates()
    source = (batch for _, batch in batches(data(), 2, tokenizer().pad_token_id, torch.Generator().manual_seed(0)))
    settings = LoopSettings(seed=0, pad_id=tokenizer().pad_token_id, device=torch.device("cpu"), optimizer_hook=hook)
    train_steps(tiny_model(0), source, steps, sft_loss, config, settings)
    return hook.rates


def test_constant_schedule_warms_up_linearly_then_holds() -> None:
    """Step t runs at lr · t / w during the w warm-up steps, then at lr: 0, lr/3, 2lr/3, lr, lr, lr for w = 3."""
    got = rates(TrainConfig(lr=1e-3, epochs=1, schedule="constant", warmup_steps=3), 6)
    assert got == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3])


def test_cosine_schedule_decays_to_zero_over_the_steps() -> None:
    """No warm-up: step t of T runs at lr · (1 + cos(π t / T)) / 2."""
    got = rates(TrainConfig(lr=1e-3, epochs=1), 5)
    assert got == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 5)) / 2 for t in range(5)])


def test_warmup_is_the_longer_of_ratio_and_steps() -> None:
    got = rates(TrainConfig(lr=1e-3, epochs=1, schedule="constant", warmup_ratio=0.5, warmup_steps=1), 4)
    assert got == pytest.approx([0.0, 0.5e-3, 1e-3, 1e-3])  # 0.5 · 4 = 2 warm-up steps beat 1


def test_an_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="cosine, constant"):
        TrainConfig(lr=1e-3, epochs=1, schedule="linear")


def test_a_distiller_override_replaces_only_what_it_sets() -> None:
    j = job()
    config = j.with_overrides(5e-6, schedule="constant", warmup_steps=None)
    assert (config.lr, config.schedule, config.warmup_steps, config.epochs) == (5e-6, "constant", 0, j.config.epochs)
