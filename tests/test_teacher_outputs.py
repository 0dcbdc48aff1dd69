"""Teacher outputs computed once: top-k cache accuracy, alignment, caching, and output defenses."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from kdbench.core.cache import ArtifactCache
from kdbench.core.types import TrainConfig
from kdbench.defense.base import DefenseBase
from kdbench.defense.stack import DefenseStack
from kdbench.distill.job import attached
from kdbench.distill.teacher_outputs import DEFAULT_TOP_K, TOLERANCE, sequences_hash, teacher_outputs
from kdbench.training.loop import LoopSettings, batches, sft_loss, shifted, train_loop
from kdbench.training.objectives import OBJECTIVES, TopKLogProbs
from tests.distill_helpers import (
    data,
    job,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_model,
    tokenizer,
)


@dataclass(frozen=True)
class TemperatureParams:
    temperature: float = 2.0


class Temperature(DefenseBase):
    """A teacher-output defense: logits divided by a temperature."""

    name = "temperature"
    description = "test defense"
    Params = TemperatureParams
    stages: ClassVar[frozenset[str]] = frozenset({"teacher_outputs"})

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.params.temperature


@functools.lru_cache(maxsize=1)
def trained_teacher() -> torch.nn.Module:
    """A teacher fitted to the data for a few epochs: peaked distributions, like a real fine-tuned teacher.
    Shared by the tests, which only run it in eval mode."""
    teacher = tiny_model(1, n_embd=48)
    train_loop(teacher, data(), sft_loss, TrainConfig(lr=1e-2, epochs=4, batch_size=4),
               LoopSettings(seed=0, pad_id=tokenizer().pad_token_id, device=torch.device("cpu")))
    return teacher


def shuffled_batches(j):
    for idx, batch in batches(j.data, j.config.batch_size, j.pad_id, torch.Generator().manual_seed(3)):
        batch["index"] = torch.tensor(idx)
        yield batch


def loss_gaps(j, outputs, objective: str) -> list[float]:
    """|objective(cached top-k) − objective(full teacher logits)| per batch, for the job's student."""
    loss_of = OBJECTIVES[objective]
    gaps = []
    with torch.no_grad():
        for batch in shuffled_batches(j):
            batch = outputs(0, batch)
            student = j.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            _, mask = shifted(batch)
            cached = attached(batch)
            assert cached is not None
            full = j.teacher_logits(batch)[:, :-1]
            gaps.append(abs(float(loss_of(student, cached, mask)) - float(loss_of(student, full, mask))))
    return gaps


@pytest.mark.parametrize("objective", ["fkl", "srkl", "jsd"])
def test_cached_top_k_reproduces_the_full_logit_loss(objective: str) -> None:
    for teacher in (tiny_model(1), trained_teacher()):
        j = job(teacher=teacher)
        gaps = loss_gaps(j, teacher_outputs(j, k=DEFAULT_TOP_K), objective)
        assert max(gaps) < TOLERANCE, (objective, gaps)


def test_top_k_of_the_whole_vocabulary_is_exact() -> None:
    j = job()
    gaps = loss_gaps(j, teacher_outputs(j, k=len(tokenizer())), "fkl")
    assert max(gaps) < 1e-5


def test_outputs_line_up_with_the_response_positions_of_any_batch() -> None:
    j = job(teacher=trained_teacher())
    outputs = teacher_outputs(j, k=8)
    for batch in shuffled_batches(j):
        batch = outputs(0, batch)
        _, mask = shifted(batch)
        live = TopKLogProbs.from_logits(j.teacher_logits(batch)[:, :-1], 8)
        cached = attached(batch)
        assert cached is not None and cached.indices.shape == live.indices.shape
        assert torch.equal(cached.indices[mask], live.indices[mask])
        torch.testing.assert_close(cached.logprobs[mask], live.logprobs[mask], atol=1e-5, rtol=0)


def test_outputs_are_computed_once_then_read_from_the_cache(tmp_path) -> None:
    cache = ArtifactCache(tmp_path)
    teacher = tiny_model(1)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    first = teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=16)
    assert len(calls) == 1 and len(cache.builds) == 1  # 16 examples: one batch of 32
    second = teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=16)
    assert len(calls) == 1 and len(cache.hits) == 1
    assert all(torch.equal(getattr(first, f), getattr(second, f)) for f in ("indices", "logprobs", "offsets"))
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t", data_=data(8)), k=16)  # other sequences
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=8)  # other k
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="u"), k=16)  # other teacher
    assert len(cache.builds) == 4


def test_output_defenses_apply_before_the_truncation_and_key_the_cache(tmp_path) -> None:
    cache = ArtifactCache(tmp_path)
    teacher = trained_teacher()
    defenses = DefenseStack([Temperature(TemperatureParams())])
    defended = job(teacher=teacher, cache=cache, teacher_key="t", defenses=defenses)
    plain = teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=8)
    hot = teacher_outputs(defended, k=8)
    assert len(cache.builds) == 2 and not torch.equal(plain.logprobs, hot.logprobs)
    batch = next(shuffled_batches(defended))
    with torch.no_grad():
        raw = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    want = TopKLogProbs.from_logits(raw / 2.0, 8)  # softmax of the defended logits, then top-k
    cached = attached(hot(0, batch))
    _, mask = shifted(batch)
    assert cached is not None
    torch.testing.assert_close(cached.logprobs[mask], want.logprobs[mask], atol=1e-5, rtol=0)


def test_outputs_for_other_sequences_are_refused() -> None:
    j = job()
    outputs = teacher_outputs(j, k=4)
    other = job(data_=list(reversed(data())))
    assert sequences_hash(other.data) != sequences_hash(j.data)
    with pytest.raises(ValueError, match="computed for other sequences"):
        for batch in shuffled_batches(other):
            outputs(0, batch)


def test_batches_without_an_index_keep_the_live_teacher() -> None:
    j = job()
    batch = next(shuffled_batches(j))
    del batch["index"]
    assert attached(teacher_outputs(j, k=4)(0, batch)) is None
