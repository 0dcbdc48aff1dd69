"""What a distiller is given: :class:`DistillJob`, the teacher, the student to train, the data and the shared
training loop with the defenses' hooks already wired in; plus the KD loss every distiller shares."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import KdbenchError
from kdbench.core.plugin import Plugin
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded, TrainConfig
from kdbench.defense.stack import DefenseStack
from kdbench.models import hub as models
from kdbench.training.loop import (
    BatchHook,
    LoopSettings,
    LossFn,
    OptimizerHook,
    batches,
    response_cross_entropy,
    sft_loss,
    shifted,
    to_device,
    train_loop,
    train_steps,
)
from kdbench.training.objectives import Teacher, TopKLogProbs, get_objective


@runtime_checkable
class Distiller(Plugin, Protocol):
    """A knowledge-distillation technique: trains ``job.student`` from ``job.teacher`` on the job's data."""

    def __init__(self, params: Any) -> None: ...

    def distill(self, job: DistillJob) -> Any:
        """Train and return the student (a transformers causal LM)."""
        ...



@dataclass
class DistillJob:
    """One student's distillation. ``train`` runs the shared loop; ``teacher_logits`` applies output defenses.

    ``max_total_tokens`` caps prompt + sampled response for the distillers that sample (the task's
    ``models.max_total_tokens``; 512 in [Z]/DistiLLM), and never exceeds either model's position limit.
    """

    teacher: Any
    student: Any
    tokenizer: Any
    data: Sequence[Encoded]
    config: TrainConfig
    seed: int
    device: torch.device
    teacher_key: str = ""
    cache: ArtifactCache | None = None
    defenses: DefenseStack = field(default_factory=lambda: DefenseStack([]))
    reporter: Reporter = field(default_factory=NullReporter)
    label: str = "distilling"
    max_total_tokens: int = 512
    micro_batch: int | None = None  # rows per forward pass (kdbench.training.memory); None: the whole batch
    notes: dict[str, Any] = field(default_factory=dict)  # what the distillation chose and measured (to run.json)
    lm_coef: float = 0.0  # weight of [Z]'s language-modelling term on ``pretrain`` (a distiller's lm_coef)
    pretrain: Sequence[Encoded] = ()  # pre-training text, every token after the first scored

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def with_overrides(self, lr: float | None = None, epochs: int | None = None, **settings: Any) -> TrainConfig:
        """The training config with a distiller's own lr, epochs or other ``TrainConfig`` settings (those not None)
        in place of the task's."""
        changes = {"lr": lr, "epochs": epochs, **settings}
        return replace(self.config, **{k: v for k, v in changes.items() if v is not None})

    @property
    def optimizer_hook(self) -> OptimizerHook | None:
        """The defenses' training wrapper, or None when no defense wraps training (so batches may be split)."""
        return self.defenses.wrap_training if self.defenses.wraps_training else None

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.teacher.eval()
        logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.defenses.transform_teacher_logits(logits.float())

    def teacher_targets(self, batch: dict[str, torch.Tensor]) -> Teacher:
        """The teacher's distribution aligned with the student's ``logits[:, :-1]``: the cached top-k outputs a
        :class:`kdbench.distill.teacher_outputs.TeacherOutputs` hook attached, else live (defended) teacher logits."""
        cached = attached(batch)
        return cached if cached is not None else self.teacher_logits(batch)[:, :-1]

    def new_token_budget(self, prompt_length: int, cap: int | None = None) -> int:
        """How many tokens may be sampled after a prompt: up to ``max_total_tokens`` and both models' position
        limits in all, and at most ``cap`` when given."""
        limit = min(self.max_total_tokens, models.max_positions(self.student), models.max_positions(self.teacher))
        budget = limit - prompt_length
        if budget < 1:
            raise KdbenchError(
                f"A prompt of {prompt_length} tokens leaves no room to sample a response within {limit} tokens "
                "(the task's max_total_tokens and the models' position limits); lower max_prompt_tokens."
            )
        return budget if cap is None else min(cap, budget)

    def generator(self, purpose: str) -> torch.Generator:
        """A generator on the job's device seeded from (seed, purpose): each random stream of a distiller
        (student samples, replay draws, ...) is reproducible and independent of the training loop's."""
        digest = hashlib.sha256(f"{self.seed}:{purpose}".encode()).digest()
        return torch.Generator(device=self.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def loop_settings(self, prepare: BatchHook | None = None) -> LoopSettings:
        """The shared loop's settings for this job (seed, device, progress, micro-batches, the defenses'
        optimizer hook) with a distiller's own ``prepare`` hook."""
        return LoopSettings(
            seed=self.seed, pad_id=self.pad_id, device=self.device, reporter=self.reporter, label=self.label,
            prepare=prepare, optimizer_hook=self.optimizer_hook, micro_batch=self.micro_batch,
        )

    def with_lm_term(self, loss_fn: LossFn) -> LossFn:
        """``loss_fn`` + lm_coef · cross-entropy on the next batch of pre-training text: [Z]'s (DistiLLM's)
        ``lm_coef`` term, which keeps the student a language model while it distils. Unchanged at lm_coef 0.
        Each call draws a fresh batch (with micro-batches, one per micro-batch), in shuffled passes."""
        if self.lm_coef == 0.0:
            return loss_fn
        if not self.pretrain:
            raise KdbenchError(f"{self.label}: lm_coef={self.lm_coef} needs pre-training text, and the job has none "
                               "(a task's 'pretrain_text' file, or its public split).")
        generator = torch.Generator().manual_seed(self.generator("lm-term").initial_seed())  # CPU: randperm
        size = self.config.batch_size

        def endless() -> Iterator[dict[str, Tensor]]:
            while True:
                for _, batch in batches(self.pretrain, size, self.pad_id, generator):
                    yield batch

        stream = endless()

        def loss(model: Any, batch: dict[str, Tensor]) -> Tensor:
            lm_batch = to_device(next(stream), batch["input_ids"].device)
            return loss_fn(model, batch) + self.lm_coef * sft_loss(model, lm_batch)

        return loss

    def train(self, loss_fn: LossFn, config: TrainConfig, prepare: BatchHook | None = None) -> list[float]:
        self.teacher.to(self.device)
        return train_loop(self.student, self.data, self.with_lm_term(loss_fn), config, self.loop_settings(prepare))

    def train_steps(
        self,
        loss_fn: LossFn,
        config: TrainConfig,
        source: Iterable[dict[str, torch.Tensor]],
        total_steps: int,
        prepare: BatchHook | None = None,
    ) -> list[float]:
        """Like :meth:`train`, over ``total_steps`` batches made as training goes (e.g. PPO rollouts)."""
        self.teacher.to(self.device)
        return train_steps(self.student, source, total_steps, self.with_lm_term(loss_fn), config,
                           self.loop_settings(prepare))


def distillation_loss(job: DistillJob, objective: str, kd_ratio: float = 1.0, **options: float) -> LossFn:
    """DistiLLM's total loss, (1 − kd_ratio)·CE(sequence tokens) + kd_ratio·objective(teacher, student),
    averaged over response positions; ``options`` go to the objective (jsd's ``lmbda``, skew ``alpha``).

    The teacher comes from :meth:`DistillJob.teacher_targets`: cached top-k outputs when a hook attached them,
    live logits otherwise (student samples). CE is taken on the batch's own tokens (gold or sampled), as in
    DistiLLM, and skipped at kd_ratio 1 ([Z]'s setting for every distiller).
    """
    loss_of = get_objective(objective)

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        student = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        _, mask = shifted(batch)
        kd = loss_of(student, job.teacher_targets(batch), mask, **options)
        if kd_ratio == 1.0:
            return kd
        return (1.0 - kd_ratio) * response_cross_entropy(student, batch) + kd_ratio * kd

    return loss


# --- cached teacher outputs, attached to a batch by kdbench.distill.teacher_outputs ----------------------------

INDICES = "teacher_topk_indices"
LOGPROBS = "teacher_topk_logprobs"
COUNTS = "teacher_topk_counts"


def attached(batch: dict[str, Tensor]) -> TopKLogProbs | None:
    """The cached teacher distribution a :class:`TeacherOutputs` hook attached to ``batch``, if any."""
    if INDICES not in batch:
        return None
    return TopKLogProbs(indices=batch[INDICES], logprobs=batch[LOGPROBS], counts=batch.get(COUNTS))
