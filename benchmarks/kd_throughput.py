"""One KD epoch with cached teacher outputs vs one fine-tuning epoch of the same student on the same data.

On the default task's data and models (the teacher is trained once, or loaded from the kdbench cache), it
times, side by side in one process and alternating so that load from other processes hits both alike:

- SFT: one epoch of cross-entropy on the distillation data (the no-KD baseline's step);
- KD (cached): one epoch of fkl against the teacher's cached top-k outputs (the ``kd`` distiller's step);
- KD (live), for reference: the same epoch running the teacher at every step instead.

It prints the best time of ``--repeats`` runs of each and the ratio throughput(KD cached) / throughput(SFT)
(target >= 0.8), the one-off cost of building the teacher outputs, and the accuracy of the top-k cache: the
max/mean |loss(top-k) − loss(full logits)| per batch (fkl, jsd, srkl), for a fresh student and for the KD-trained one.

    python benchmarks/kd_throughput.py [--task synthetic-pii] [--tail-bound 0.05] [--top-k CAP] [--repeats 2]
        [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from kdbench.core.cache import ArtifactCache
from kdbench.distill.job import DistillJob, attached, distillation_loss
from kdbench.distill.strategies import GroundTruth
from kdbench.distill.teacher_outputs import DEFAULT_TOP_K, TAIL_BOUND, TeacherOutputs, teacher_outputs
from kdbench.models import hub as models
from kdbench.run.context import RunContext
from kdbench.tasks.manifest import load_task
from kdbench.tasks.splits import make_splits
from kdbench.training.loop import LoopSettings, batches, chain, sft_loss, shifted, to_device, train_loop
from kdbench.training.objectives import get_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="synthetic-pii")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="cap on tokens kept per position")
    parser.add_argument("--tail-bound", type=float, default=TAIL_BOUND, help="mass a position may leave out")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = load_task(args.task)
    ctx = RunContext(
        task=task, splits=make_splits(task), cache=ArtifactCache(), device=models.resolve_device(args.device),
        seed=args.seed, teacher_ref=task.models.teacher, student_ref=task.models.student,
    )
    trained = ctx.teacher()
    data = ctx.encode(ctx.distillation_data())
    config = replace(ctx.training("student"), epochs=1)
    print(f"task {task.name}: {len(data)} examples, batch {config.batch_size}, teacher {ctx.teacher_ref}, "
          f"student {ctx.student_ref}, vocabulary {len(ctx.tokenizer)}, torch threads {torch.get_num_threads()}")

    def job(student: Any) -> DistillJob:
        return DistillJob(
            teacher=ctx.model(trained), student=student, tokenizer=ctx.tokenizer, data=data, config=config,
            seed=args.seed, device=ctx.device, teacher_key=trained.key, cache=ctx.cache,
        )

    def fresh_student() -> Any:
        return models.init_model(ctx.student_ref, ctx.tokenizer, args.seed)

    start = time.perf_counter()
    outputs = teacher_outputs(job(fresh_student()), k=args.top_k, tail_bound=args.tail_bound)
    print(f"teacher outputs (tail <= {args.tail_bound}, cap {args.top_k}): {time.perf_counter() - start:.2f}s to "
          f"build or load ({outputs.positions} positions, {outputs.entries / outputs.positions:.0f} tokens and "
          f"{outputs.bytes() / outputs.positions:.0f} bytes per position; tail mass left out: {_tail(outputs)})")

    def sft_epoch() -> Any:
        student = fresh_student()
        train_loop(student, data, sft_loss, config,
                   LoopSettings(seed=args.seed, pad_id=ctx.tokenizer.pad_token_id, device=ctx.device))
        return student

    def kd_epoch(cached: bool) -> Any:
        student = fresh_student()
        distill = job(student)
        distill.train(distillation_loss(distill, "fkl"), config, chain(GroundTruth(), outputs if cached else None))
        return student

    runs: dict[str, list[float]] = {"SFT": [], "KD (cached)": [], "KD (live teacher)": []}
    kd_student = None
    for _ in range(args.repeats):
        for name, run in (("SFT", sft_epoch), ("KD (cached)", lambda: kd_epoch(True)),
                          ("KD (live teacher)", lambda: kd_epoch(False))):
            seconds, student = _timed(run)
            runs[name].append(seconds)
            if name.startswith("KD (cached"):
                kd_student = student
    best = {name: min(times) for name, times in runs.items()}
    for name, seconds in best.items():
        print(f"{name:18s} best {seconds:6.2f}s  ({len(data) / seconds:6.1f} examples/s; runs: "
              + ", ".join(f"{t:.2f}s" for t in runs[name]) + ")")
    print(f"throughput KD (cached) / SFT = {best['SFT'] / best['KD (cached)']:.3f}  (target >= 0.8)")
    print(f"throughput KD (live)   / SFT = {best['SFT'] / best['KD (live teacher)']:.3f}")
    for label, student in (("fresh student", fresh_student()), ("after one KD epoch", kd_student)):
        for objective, diffs in _topk_error(job(student), outputs).items():
            print(f"|{objective}(cached) - {objective}(full)| per batch, {label}: max {max(diffs):.2e}, "
                  f"mean {sum(diffs) / len(diffs):.2e}")


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def _tail(outputs: TeacherOutputs) -> str:
    tail = outputs.tail_mass()
    return f"max {float(tail.max()):.2e}, mean {float(tail.mean()):.2e}"


@torch.no_grad()
def _topk_error(job: DistillJob, outputs: TeacherOutputs) -> dict[str, list[float]]:
    """|loss with the cached top-k teacher − loss with the full teacher logits| for every batch of the data, for
    the losses the distillers use on cached outputs: fkl (kd, seqkd), jsd λ 0.9 (gkd), srkl α 0.1 (distillm)."""
    job.student.to(job.device).eval()
    job.teacher.to(job.device)
    objectives = {"fkl": {}, "jsd": {"lmbda": 0.9}, "srkl": {"alpha": 0.1}}
    diffs: dict[str, list[float]] = {name: [] for name in objectives}
    for idx, batch in batches(job.data, job.config.batch_size, job.pad_id, None):
        batch["index"] = torch.tensor(idx)
        batch = to_device(outputs(0, batch), job.device)
        student = job.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        _, mask = shifted(batch)
        cached = attached(batch)
        assert cached is not None
        full = job.teacher_logits(batch)[:, :-1]
        for name, options in objectives.items():
            loss = get_objective(name)
            gap = float(loss(student, cached, mask, **options)) - float(loss(student, full, mask, **options))
            diffs[name].append(abs(gap))
    return diffs


if __name__ == "__main__":
    main()
