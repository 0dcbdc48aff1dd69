"""Which sequences a distiller's loss is computed on (METHODS.md §3), shared by the distillers.

- ground truth: the distillation set as it is (kd, the sft baseline, and the off-policy steps below);
- teacher samples (SeqKD): one teacher response per prompt, sampled once and cached (:func:`teacher_samples`);
- student samples through a replay buffer (GKD with probability 0.5 per step, ImitKD always:
  :class:`MixedSampling`), or on DistiLLM's adaptive schedule (:class:`AdaptiveSGO`).

The per-step strategies are ``prepare`` hooks of the training loop: given the step and the ground-truth batch
(with ``batch["index"]``), they return the batch the loss is computed on. A student-sampled sequence is the
prompt plus the sampled response (ending in EOS when the student stopped), re-collated as a training batch, so
the labels cover the sampled tokens and it carries no ``index`` (cached teacher outputs do not apply; the
teacher runs live). Every strategy reports each batch to its ``observers`` as (step, source, batch), the
sequences the loss was computed on. All sampling is pure ancestral sampling (T 1, no top-k/top-p) from a
generator seeded by the job's seed, so a run is deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from kdbench.core.types import Encoded
from kdbench.distill.job import DistillJob
from kdbench.distill.sampling import PolicyPart, sample
from kdbench.distill.teacher_outputs import output_defenses
from kdbench.training.loop import batches, collate, response_cross_entropy, to_device

GOLD, STUDENT, REPLAY = "gold", "student", "replay"
REPLAY_CAPACITY = 1000  # DistiLLM's --capacity, used by GKD, ImitKD and DistiLLM in [Z]
Batch = dict[str, Tensor]
Observer = Callable[[int, str, Batch], None]


class ReplayBuffer:
    """The most recent ``capacity`` student-sampled sequences (oldest dropped first); a batch is drawn
    uniformly without replacement, as DistiLLM's buffer does."""

    def __init__(self, generator: torch.Generator, capacity: int = REPLAY_CAPACITY) -> None:
        self.generator = generator
        self.items: deque[Encoded] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) == self.items.maxlen

    def add(self, sequences: Sequence[Encoded]) -> None:
        self.items.extend(sequences)

    def sample(self, n: int) -> list[Encoded]:
        picks = torch.randperm(len(self.items), generator=self.generator, device=self.generator.device)[:n]
        return [self.items[i] for i in picks.tolist()]


class StudentSampler:
    """The student's own responses to prompts, sampled with the job's budget (``max_new_tokens`` caps it)."""

    def __init__(self, job: DistillJob, generator: torch.Generator, max_new_tokens: int | None = None) -> None:
        self.job, self.generator, self.max_new_tokens = job, generator, max_new_tokens

    def __call__(self, prompts: Sequence[tuple[int, ...]]) -> list[Encoded]:
        job = self.job
        responses = sample(
            [PolicyPart(job.student)], prompts, generator=self.generator,
            max_new_tokens=[job.new_token_budget(len(p), self.max_new_tokens) for p in prompts],
            eos_id=job.eos_id, pad_id=job.pad_id, device=job.device, batch_size=len(prompts),
        )
        return [Encoded(tuple(p), r) for p, r in zip(prompts, responses, strict=True)]

    def for_batch(self, batch: Batch) -> list[Encoded]:
        """Student responses to the prompts of a ground-truth batch."""
        return self([self.job.data[i].prompt_ids for i in batch["index"].tolist()])


class Strategy:
    """A ``prepare`` hook choosing, at each step, the sequences the loss is computed on."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def __call__(self, step: int, batch: Batch) -> Batch:
        source, batch = self.choose(step, batch)
        for observe in self.observers:
            observe(step, source, batch)
        return batch

    def choose(self, step: int, batch: Batch) -> tuple[str, Batch]:
        raise NotImplementedError


class GroundTruth(Strategy):
    """The distillation set's own responses, every step."""

    def choose(self, step: int, batch: Batch) -> tuple[str, Batch]:
        return GOLD, batch


class MixedSampling(Strategy):
    """GKD / ImitKD as DistiLLM runs them: each step, with probability ``student_fraction`` the student answers
    the batch's prompts, the answers join the replay buffer and the step trains on a batch drawn from the
    buffer; otherwise on the ground truth. GKD: 0.5; ImitKD: 1.0 (always student samples)."""

    def __init__(
        self,
        job: DistillJob,
        student_fraction: float,
        capacity: int = REPLAY_CAPACITY,
        max_new_tokens: int | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        super().__init__(observers)
        self.generator = job.generator("mixed-sampling")
        self.student_fraction = student_fraction
        self.sampler = StudentSampler(job, self.generator, max_new_tokens)
        self.buffer = ReplayBuffer(self.generator, capacity)
        self.pad_id = job.pad_id

    def choose(self, step: int, batch: Batch) -> tuple[str, Batch]:
        if _uniform(self.generator) >= self.student_fraction:
            return GOLD, batch
        self.buffer.add(self.sampler.for_batch(batch))
        return STUDENT, collate(self.buffer.sample(len(batch["index"])), self.pad_id)


@dataclass
class SGOState:
    """DistiLLM's adaptive threshold and the validation losses that moved it (for reports and tests)."""

    threshold: float
    reference_loss: float | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, validation loss, threshold)


class AdaptiveSGO(Strategy):
    """DistiLLM's adaptive student-generated output schedule.

    The threshold φ starts at ``init_threshold`` (0) and grows by ``step_size`` (0.1, at most 1) whenever the
    validation loss has risen by ``loss_eps`` (0.1) or more since the last reference (the loss before
    training, then the loss at the last rise); validation runs before training and after every epoch. Each
    step draws r ~ U(0, 1): r < φ·(1 − step/total) → fresh student samples (into the replay buffer, and the
    step trains on them); else r < φ → a batch replayed from the buffer; else the ground truth. Until the buffer
    is full (``capacity`` sequences, DistiLLM's 1,000) a replay step samples fresh instead, as DistiLLM's
    ``finetune.py`` does (``len(replay_buffer) < args.capacity``): replay starts only from a full buffer.

    Validation loss: the student's cross-entropy on the ground-truth responses of ``validation``, a held-out
    slice of the distillation data (DistiLLM uses its dev split; kdbench has none, see :func:`split_off`).
    """

    def __init__(
        self,
        job: DistillJob,
        validation: Sequence[Encoded],
        total_steps: int,
        steps_per_epoch: int,
        *,
        init_threshold: float = 0.0,
        step_size: float = 0.1,
        loss_eps: float = 0.1,
        capacity: int = REPLAY_CAPACITY,
        max_new_tokens: int | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        super().__init__(observers)
        self.job, self.validation = job, list(validation)
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step_size, self.loss_eps = step_size, loss_eps
        self.generator = job.generator("adaptive-sgo")
        self.sampler = StudentSampler(job, self.generator, max_new_tokens)
        self.buffer = ReplayBuffer(self.generator, capacity)
        self.state = SGOState(threshold=init_threshold)

    def choose(self, step: int, batch: Batch) -> tuple[str, Batch]:
        if step % self.steps_per_epoch == 0:
            self._update_threshold(step)
        n = len(batch["index"])
        threshold = self.state.threshold
        r = _uniform(self.generator)
        fresh = threshold * (1.0 - (step + 1) / self.total_steps)  # DistiLLM counts steps from 1
        if r < fresh or (r < threshold and not self.buffer.full):
            sampled = self.sampler.for_batch(batch)
            self.buffer.add(sampled)
            return STUDENT, collate(sampled, self.job.pad_id)
        if r < threshold:
            return REPLAY, collate(self.buffer.sample(n), self.job.pad_id)
        return GOLD, batch

    def _update_threshold(self, step: int) -> None:
        loss = self.validation_loss()
        state = self.state
        if state.reference_loss is None:
            state.reference_loss = loss
        elif loss >= state.reference_loss + self.loss_eps:
            state.threshold = min(1.0, state.threshold + self.step_size)
            state.reference_loss = loss
        state.history.append((step, loss, state.threshold))

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Token-weighted mean cross-entropy of the student on the validation responses."""
        student, job = self.job.student, self.job
        mode = student.training
        student.eval()
        total, tokens = 0.0, 0
        try:
            for _, batch in batches(self.validation, job.config.batch_size, job.pad_id, None):
                batch = to_device(batch, job.device)
                logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(response_cross_entropy(logits[:, :-1], batch)) * n
                tokens += n
        finally:
            student.train(mode)
        return total / max(tokens, 1)


def split_off(
    data: Sequence[Encoded], fraction: float, generator: torch.Generator
) -> tuple[list[Encoded], list[Encoded]]:
    """(train, held out): a random ``fraction`` of ``data`` (at least one example, and at least one left to
    train on) held out for validation."""
    if len(data) < 2:
        raise ValueError("need at least two examples to hold one out for validation")
    n_out = min(len(data) - 1, max(1, round(fraction * len(data))))
    order = torch.randperm(len(data), generator=generator, device=generator.device).tolist()
    held = set(order[:n_out])
    return [e for i, e in enumerate(data) if i not in held], [data[i] for i in sorted(held)]


def teacher_samples(job: DistillJob, max_new_tokens: int | None = None, batch_size: int = 32) -> list[Encoded]:
    """SeqKD's data: for every example of ``job.data``, its prompt and one response sampled from the (defended)
    teacher, generated once and cached under ``teacher_samples/`` by teacher key, prompts and their length
    budgets, seed and output defenses (in memory only when the job has no cache or teacher key)."""
    prompts = [e.prompt_ids for e in job.data]
    budgets = [job.new_token_budget(len(p), max_new_tokens) for p in prompts]

    def draw() -> list[tuple[int, ...]]:
        part = PolicyPart(job.teacher, transform=job.defenses.transform_teacher_logits)
        return sample(
            [part], prompts, generator=job.generator("teacher-samples"), max_new_tokens=budgets,
            eos_id=job.eos_id, pad_id=job.pad_id, device=job.device, batch_size=batch_size,
        )

    if job.cache is None or not job.teacher_key:
        responses = draw()
    else:
        spec = {
            "stage": "teacher_samples",
            "version": 1,
            "teacher": job.teacher_key,
            "prompts": hashlib.sha256(json.dumps([prompts, budgets]).encode()).hexdigest(),
            "seed": job.seed,
            "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
            "defenses": output_defenses(job),
        }

        def build(tmp: Path) -> None:
            (tmp / "responses.json").write_text(json.dumps(draw()))

        path = job.cache.get_or_build("teacher_samples", spec, build)
        responses = [tuple(r) for r in json.loads((path / "responses.json").read_text())]
    return [Encoded(p, tuple(r)) for p, r in zip(prompts, responses, strict=True)]


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator, device=generator.device))
