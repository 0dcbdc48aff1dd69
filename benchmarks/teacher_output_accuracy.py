"""Bytes per position and KD loss error of the teacher-output cache, old format against new.

On a task's distillation data and trained teacher (the default task unless ``--task``; from the kdbench cache when
built), for a fresh student, it prints per storage variant: bytes per response position, the teacher mass left out
(mean, max) and |loss(stored) − loss(full teacher logits)| per batch (max, mean) for fkl (kd, seqkd), jsd λ 0.9
(gkd) and srkl α 0.1 (distillm). Variants:

- ``top-512 fp32``: the format before issue 21 (k = 512 per position, float32 log-probs + int32 ids, 8 B/entry);
- ``ε=… fp16``: the cache as stored (each position the fewest tokens leaving out ≤ ε, at most ``--top-k``;
  float16 probabilities, ids as uint16 or a bitmap over the vocabulary when smaller), read back from disk per
  batch;
- ``all fp16``: the whole distribution in 16 bits: its error is the 16-bit rounding alone.

    python benchmarks/teacher_output_accuracy.py [--task synthetic-pii] [--data-dir DIR] [--bounds 0.001,0.01]
        [--top-k 512]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdbench.core.cache import ArtifactCache
from kdbench.distill.job import DistillJob, attached
from kdbench.distill.teacher_outputs import DEFAULT_TOP_K, TAIL_BOUND, teacher_outputs
from kdbench.models import hub as models
from kdbench.run.context import RunContext
from kdbench.tasks.manifest import load_task
from kdbench.tasks.splits import make_splits
from kdbench.training.loop import batches, shifted
from kdbench.training.objectives import TopKLogProbs, get_objective

OBJECTIVES: dict[str, dict[str, float]] = {"fkl": {}, "jsd": {"lmbda": 0.9}, "srkl": {"alpha": 0.1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="synthetic-pii")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--bounds", default=f"{TAIL_BOUND:g},0.01,0.05")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    ctx = RunContext(
        task=task, splits=make_splits(task, data_dir=args.data_dir), cache=ArtifactCache(),
        device=models.resolve_device("cpu"), seed=0, teacher_ref=task.models.teacher,
        student_ref=task.models.student,
    )
    trained = ctx.teacher()
    data = ctx.encode(ctx.distillation_data())
    job = DistillJob(
        teacher=ctx.model(trained), student=models.init_model(ctx.student_ref, ctx.tokenizer, 0),
        tokenizer=ctx.tokenizer, data=data, config=replace(ctx.training("student"), epochs=1), seed=0,
        device=ctx.device, teacher_key=trained.key, cache=ctx.cache,
    )
    positions = sum(len(e.response_ids) for e in data)
    print(f"task {task.name}: {len(data)} examples, {positions} response positions, vocabulary {len(ctx.tokenizer)}")
    print(f"{'variant':16s} {'B/position':>10s} {'left out mean/max':>18s}  "
          + "  ".join(f"{name + ' max/mean':>19s}" for name in OBJECTIVES))
    k = min(512, len(ctx.tokenizer))
    _row(f"top-{k} fp32", 8 * k, *_errors(job, lambda batch: _old(job, batch, k)))
    variants = [(f"ε={b} fp16", args.top_k, float(b)) for b in args.bounds.split(",")]
    for name, cap, bound in [*variants, ("all fp16", len(ctx.tokenizer), 0.0)]:
        stored = teacher_outputs(job, k=cap, tail_bound=bound)
        tail = stored.tail_mass()
        _row(name, stored.bytes() / positions, *_errors(job, lambda b, s=stored: attached(s(0, b))),
             (float(tail.mean()), float(tail.max())))


def _old(job: DistillJob, batch: dict[str, torch.Tensor], k: int) -> TopKLogProbs:
    """The pre-issue-21 cache: the top k log-probs in float32, as it stored and read them."""
    return TopKLogProbs.from_logits(job.teacher_logits(batch)[:, :-1], k)


@torch.no_grad()
def _errors(job: DistillJob, teacher: Any) -> tuple[dict[str, list[float]], tuple[float, float]]:
    gaps: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    tails: list[torch.Tensor] = []
    job.student.eval()
    for idx, batch in batches(job.data, job.config.batch_size, job.pad_id, None):
        batch["index"] = torch.tensor(idx)
        student = job.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        _, mask = shifted(batch)
        full = job.teacher_logits(batch)[:, :-1]
        stored = teacher(batch)
        if isinstance(stored, TopKLogProbs) and stored.counts is None:
            tails.append(1.0 - stored.logprobs[mask].double().exp().sum(-1))
        for name, options in OBJECTIVES.items():
            loss = get_objective(name)
            gaps[name].append(abs(float(loss(student, stored, mask, **options)) - float(loss(student, full, mask,
                                                                                             **options))))
    tail = torch.cat(tails) if tails else torch.zeros(1)
    return gaps, (float(tail.mean()), float(tail.max()))


def _row(name: str, bytes_per_position: float, gaps: dict[str, list[float]], old_tail: tuple[float, float],
         tail: tuple[float, float] | None = None) -> None:
    mean, worst = tail or old_tail
    print(f"{name:16s} {bytes_per_position:10.0f} {mean:8.1%} / {worst:6.1%}  "
          + "  ".join(f"{max(g):9.2e}/{sum(g) / len(g):9.2e}" for g in gaps.values()), flush=True)


if __name__ == "__main__":
    main()
