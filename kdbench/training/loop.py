"""Encoding, batching, the shared training loop and batched generation.

Every stage (teacher SFT, baseline SFT, every distiller) trains through :func:`train_loop`, so optimiser,
schedule, clipping, seeding and progress are identical across techniques and only the loss differs; what else a
run needs travels as one :class:`LoopSettings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from kdbench.core.data import Example, PromptTemplate
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded, TrainConfig
from kdbench.training.decoding import decode
from kdbench.training.memory import (
    OutOfMemory,
    RowBudget,
    default_tokens_per_forward,
    fits,
    release,
    run_in_chunks,
    split_rows,
    token_shares,
)

IGNORE = -100


def encode(
    examples: Sequence[Example],
    tokenizer: Any,
    template: PromptTemplate,
    max_prompt: int = 256,
    max_total: int = 512,
) -> list[Encoded]:
    """Tokenise prompt and response separately ([Z]/[D]: prompt ≤ 256 tokens, total ≤ 512).

    The prompt keeps its end (where the instruction meets ``### Response:``); the response is cut to fit.
    """
    prompts = tokenizer([template.prompt(e) for e in examples], add_special_tokens=False)["input_ids"]
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt = prompt[-max_prompt:]
        response = [*response[: max(1, max_total - len(prompt) - 1)], eos]
        out.append(Encoded(tuple(prompt), tuple(response)))
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; ``labels`` hold the response tokens only (prompt and padding are IGNORE)."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, example in enumerate(batch):
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        input_ids[i, : len(ids)] = ids
        attention[i, : len(ids)] = 1
        labels[i, len(example.prompt_ids) : len(ids)] = ids[len(example.prompt_ids) :]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def shifted(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets and the mask of response positions, aligned with ``logits[:, :-1]``."""
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    return targets.clamp(min=0), mask


def response_cross_entropy(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token NLL over the response tokens, from ``logits[:, :-1]`` already computed (so a KD loss
    that mixes in CE, (1 − kd_ratio)·CE + kd_ratio·KD, needs one student forward pass, not two). Only the
    response rows enter the softmax: prompt and padding positions cost nothing."""
    targets, mask = shifted(batch)
    token_nll = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")
    return token_nll / mask.sum().clamp(min=1)


def sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on response tokens: the teacher's and the no-KD baseline's objective."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return response_cross_entropy(logits, batch)


LossFn = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
BatchHook = Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
OptimizerHook = Callable[[Any, torch.optim.Optimizer, Any], tuple[Any, torch.optim.Optimizer, Any]]


def chain(*hooks: BatchHook | None) -> BatchHook:
    """One ``prepare`` hook that runs ``hooks`` in order (``None`` entries are skipped), e.g. a data strategy
    that picks the sequences, then the hook that attaches cached teacher outputs to them."""
    active = [h for h in hooks if h is not None]

    def run(step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for hook in active:
            batch = hook(step, batch)
        return batch

    return run


def batches(
    data: Sequence[Encoded], batch_size: int, pad_id: int, generator: torch.Generator | None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, collated batch) pairs, shuffled by ``generator`` when given. The order is drawn at once (the
    generator's stream does not depend on how far the caller reads); each batch is collated only when reached, so
    an epoch never holds more than one padded batch."""
    order = torch.randperm(len(data), generator=generator).tolist() if generator else list(range(len(data)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, collate([data[i] for i in idx], pad_id)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass(frozen=True)
class LoopSettings:
    """How a training run goes besides its model, data, loss and recipe (``TrainConfig``): built once where a run
    is set up and passed whole, so trainers share one way of calling the loop instead of a dozen keywords.

    ``pad_id`` pads the batches :func:`train_loop` collates; ``prepare(step, batch)`` may add tensors to a batch
    (e.g. cached teacher outputs, by the ``batch["index"]`` that :func:`train_loop` provides) or replace it
    (student samples); ``optimizer_hook`` lets a defense wrap model/optimizer/scheduler (DP-SGD);
    ``micro_batch`` caps the rows per forward pass (None: whole batches; see :func:`train_steps`).
    """

    seed: int
    pad_id: int
    device: torch.device
    reporter: Reporter = field(default_factory=NullReporter)
    label: str = "training"
    prepare: BatchHook | None = None
    optimizer_hook: OptimizerHook | None = None
    micro_batch: int | None = None


def train_loop(
    model: Any, data: Sequence[Encoded], loss_fn: LossFn, config: TrainConfig, settings: LoopSettings
) -> list[float]:
    """Train ``model`` in place for ``config.epochs`` epochs of shuffled batches; return the loss of every step."""
    if not data:
        raise ValueError(f"{settings.label}: no training examples")
    generator = torch.Generator().manual_seed(settings.seed)

    def epochs() -> Iterator[dict[str, torch.Tensor]]:
        for _epoch in range(config.epochs):
            for idx, batch in batches(data, config.batch_size, settings.pad_id, generator):
                batch["index"] = torch.tensor(idx, dtype=torch.long)
                yield batch

    total = math.ceil(len(data) / config.batch_size) * config.epochs
    return train_steps(model, epochs(), total, loss_fn, config, settings)


def train_steps(
    model: Any,
    source: Iterable[dict[str, torch.Tensor]],
    total_steps: int,
    loss_fn: LossFn,
    config: TrainConfig,
    settings: LoopSettings,
) -> list[float]:
    """The optimisation loop of :func:`train_loop` over ``total_steps`` batches drawn lazily from ``source``.

    For methods whose batches are made as training goes (MiniLLM's PPO rollouts, sampled from the student
    being trained): the batch of step t is only requested after step t − 1's update. ``config.epochs`` is not
    used; the schedule (``config.schedule``, cosine by default) spans ``total_steps``. Stops early if ``source``
    runs out.

    Memory-aware: each batch goes through the model ``settings.micro_batch`` rows at a time (default: all of
    it on an accelerator; on a CPU at most :data:`~kdbench.training.memory.CPU_TOKENS_PER_FORWARD` positions),
    with gradients accumulated over the pieces (:mod:`kdbench.training.memory`); on an out-of-memory error the
    step is redone with half as many rows per piece. ``loss_fn`` must be a mean over the batch's response tokens
    for this to equal the full-batch update. With an ``optimizer_hook`` (DP-SGD: per-sample clipping depends on
    how the batch is cut) batches are never split and out-of-memory is an error that says what to lower.
    """
    label, device, reporter, prepare = settings.label, settings.device, settings.reporter, settings.prepare
    if total_steps < 1:
        raise ValueError(f"{label}: nothing to train ({total_steps} steps)")
    model.to(device)
    model.train()
    torch.manual_seed(settings.seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    warmup = max(int(config.warmup_ratio * total_steps), config.warmup_steps)
    if config.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if settings.optimizer_hook is not None:
        model, optimizer, scheduler = settings.optimizer_hook(model, optimizer, scheduler)
    splittable = settings.optimizer_hook is None
    budget = RowBudget(label, settings.micro_batch, reporter,
                       tokens=default_tokens_per_forward(device, settings.micro_batch))
    if settings.micro_batch is not None and not splittable:
        reporter.log(f"{label}: micro-batches are off (a defense wraps the optimizer: DP-SGD clips per sample); "
                     f"each batch of {config.batch_size} rows goes through whole")
    losses: list[float] = []
    with reporter.task(label, total_steps) as advance:
        # range first: zip stops before asking ``source`` for a batch too many
        for step, batch in zip(range(total_steps), source, strict=False):
            if prepare is not None:
                batch = prepare(step, batch)
            batch = to_device(batch, device)
            loss = _accumulate(model, batch, loss_fn, optimizer, budget, step, device, splittable=splittable)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss)
            advance(1, loss=loss)
    model.eval()
    return losses


def _accumulate(
    model: Any,
    batch: dict[str, torch.Tensor],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    budget: RowBudget,
    step: int,
    device: torch.device,
    *,
    splittable: bool,
) -> float:
    """The gradients of one batch's loss in ``.grad`` (micro-batched as ``budget`` allows); its loss value."""
    rows = int(batch["input_ids"].shape[0])
    while True:
        tried = budget.fit(rows, int(batch["input_ids"].shape[1])) if splittable else rows
        pieces = split_rows(batch, tried)
        shares = token_shares(pieces, IGNORE) if len(pieces) > 1 else [1.0]  # one piece: no device sync
        losses: list[float] = []
        if fits(_backward, model, loss_fn, pieces, shares, optimizer, losses, budget.label, step):
            return sum(losses)
        optimizer.zero_grad(set_to_none=True)
        release(device)
        if not splittable:
            raise OutOfMemory(
                f"{budget.label}: a batch of {rows} rows does not fit in {device.type} memory, and a defense "
                "that wraps the optimizer (DP-SGD's per-sample clipping) cannot split it. Lower the stage's "
                "batch_size (the task's training section) or use a smaller model."
            )
        budget.shrink(tried, device)


def _backward(
    model: Any,
    loss_fn: LossFn,
    pieces: Sequence[dict[str, torch.Tensor]],
    shares: Sequence[float],
    optimizer: torch.optim.Optimizer,
    losses: list[float],
    label: str,
    step: int,
) -> None:
    """Fresh gradients of Σ share·loss(piece) in ``.grad``; each piece's weighted loss appended to ``losses``."""
    optimizer.zero_grad(set_to_none=True)
    for piece, share in zip(pieces, shares, strict=True):
        loss = loss_fn(model, piece)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: the loss became {loss.item()} at step {step}")
        (loss * share).backward()
        losses.append(float(loss.detach()) * share)


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    eos_id: int,
    device: torch.device,
    batch_size: int = 32,
    reporter: Reporter | None = None,
    label: str = "generating",
) -> list[list[int]]:
    """Greedy continuations (no ``no_repeat_ngram_size``, unlike [Z]'s code), EOS and padding stripped."""
    reporter = reporter or NullReporter()
    model.to(device)
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    results: dict[int, list[int]] = {}
    with reporter.task(label, len(prompts)) as advance:

        def run(positions: list[int]) -> None:
            idx = [order[p] for p in positions]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding, so every continuation starts at the same column
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
                attention[row, width - len(prompts[i]) :] = 1
            if callable(getattr(model, "generate", None)):
                generated = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                )[:, width:].tolist()
            else:
                generated = greedy([prompts[i] for i in idx], model, max_new_tokens, eos_id, device, pad_id)
            for row, i in enumerate(idx):
                tokens = generated[row]
                if eos_id in tokens:
                    tokens = tokens[: tokens.index(eos_id)]
                results[i] = tokens
            advance(len(idx))

        # memory-aware: a chunk that does not fit is redone in halves (greedy decoding is per row)
        run_in_chunks(len(order), batch_size, run, device=device, label=label, reporter=reporter,
                      width=lambda p: len(prompts[order[p]]) + max_new_tokens)
    out = [results[i] for i in range(len(prompts))]
    return out


def greedy(
    prompts: Sequence[Sequence[int]], model: Any, max_new_tokens: int, eos_id: int, device: torch.device, pad_id: int
) -> list[list[int]]:
    """Greedy continuations for a model without HF ``generate`` (a defense's ensemble or logits wrapper), decoded
    from its ``forward()`` as ``generate`` would (:func:`kdbench.training.decoding.decode`: the model's KV cache when
    its forward returns one, the ensemble's being its members'); the caller cuts each row at its first EOS."""
    return decode([model], prompts, [max_new_tokens] * len(prompts), lambda logits: logits[0].argmax(-1, keepdim=True),
                  eos_id=eos_id, pad_id=pad_id, device=device)
