"""Peak memory and time of one training epoch with the whole batch vs micro-batches (kdbench.training.memory).

Each setting runs in a fresh process (peak RSS is a per-process high-water mark): the default task's teacher
architecture is initialised, the distillation data encoded, and then one epoch of cross-entropy is trained with
``--batch-size`` rows per step, passed through the model whole or ``micro`` rows at a time. It prints the
training's peak-memory increase (peak RSS after training − peak RSS before) and the epoch's wall time, each
with its ratio to the whole batch, measured side by side in one invocation.

    python benchmarks/micro_batch_memory.py [--batch-size 64] [--micro 16,4] [--examples 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace


def child(micro: int | None, batch_size: int, examples: int, threads: int) -> None:
    import torch

    from kdbench.core.cache import ArtifactCache
    from kdbench.models import hub as models
    from kdbench.run.context import RunContext
    from kdbench.tasks.manifest import load_task
    from kdbench.tasks.splits import make_splits
    from kdbench.training.loop import LoopSettings, sft_loss, train_loop

    torch.set_num_threads(threads)
    task = load_task("synthetic-pii")
    ctx = RunContext(task=task, splits=make_splits(task), cache=ArtifactCache(), device=torch.device("cpu"), seed=0,
                     teacher_ref=task.models.teacher, student_ref=task.models.student)
    data = ctx.encode(ctx.distillation_data()[:examples])
    model = models.init_model(ctx.teacher_ref, ctx.tokenizer, seed=0)
    config = replace(ctx.training("teacher"), epochs=1, batch_size=batch_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    settings = LoopSettings(seed=0, pad_id=ctx.tokenizer.pad_token_id, device=ctx.device, micro_batch=micro)
    train_loop(model, data, sft_loss, config, settings)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"micro": micro, "peak_increase_mb": (after - before) / 1024, "seconds": seconds,
                      "vocab": len(ctx.tokenizer), "longest": max(len(e.input_ids) for e in data)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--micro", default="16,4", help="micro-batch sizes to compare with the whole batch")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(None if args.child == "whole" else int(args.child), args.batch_size, args.examples, args.threads)
        return
    settings = ["whole", *args.micro.split(",")]
    rows = []
    for setting in settings:
        command = [sys.executable, __file__, "--child", setting, "--batch-size", str(args.batch_size),
                   "--examples", str(args.examples), "--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    whole = rows[0]
    print(f"one epoch of {args.examples} examples, batch {args.batch_size}, teacher preset, vocabulary "
          f"{whole['vocab']}, longest sequence {whole['longest']} tokens, {args.threads} thread(s)")
    print(f"{'rows per pass':>14} {'peak +MB':>10} {'× whole':>8} {'seconds':>8} {'× whole':>8}")
    for setting, row in zip(settings, rows, strict=True):
        memory, seconds = row["peak_increase_mb"], row["seconds"]
        print(f"{setting:>14} {memory:10.0f} {memory / whole['peak_increase_mb']:8.2f} {seconds:8.1f} "
              f"{seconds / whole['seconds']:8.2f}")


if __name__ == "__main__":
    main()
