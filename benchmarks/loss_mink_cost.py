"""Cost of scoring `loss` and `mink` together versus ONE batched forward pass over the same samples.

    python benchmarks/loss_mink_cost.py [--repeats 5]

Both attacks read the per-token statistics of a single batched pass (kdbench.scoring.tokenstats); this prints
(statistics pass + both attacks) / (plain forward pass), measured side by side on the default task's teacher
architecture and attack samples. Target (issue 2): <= 1.1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdbench.core.params import build_params
from kdbench.core.registry import get_registry
from kdbench.models import hub as models
from kdbench.run.cells import attack_samples
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.tokenstats import compute_token_stats
from kdbench.tasks.manifest import load_task
from kdbench.tasks.splits import make_splits
from kdbench.training.loop import batches, encode, to_device


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    task = load_task("synthetic-pii")
    splits = make_splits(task)
    texts = [task.template.prompt(e) + e.response for e in splits.roles["public"]]
    tokenizer = models.train_bpe_tokenizer(texts, task.models.vocab_size)
    model = models.init_model(task.models.teacher, tokenizer, seed=0).eval()
    members, nonmembers = attack_samples(task, splits)
    samples = members + nonmembers
    data = encode(samples, tokenizer, task.template, task.models.max_prompt_tokens, task.models.max_total_tokens)
    device, pad = torch.device("cpu"), tokenizer.pad_token_id
    registry = get_registry()
    attacks = [registry.get("attacks", n).cls(build_params(registry.get("attacks", n).cls.Params, (), n))
               for n in ("loss", "mink")]

    @torch.no_grad()
    def forward_only() -> None:
        for _, batch in batches(data, 32, pad, generator=None):
            batch = to_device(batch, device)
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def scored() -> None:
        stats = compute_token_stats(model, data, pad_id=pad, device=device, batch_size=32)
        inputs = AttackInputs(samples=samples, token_stats=stats)
        for attack in attacks:
            attack.score(inputs)

    forward_only()  # warm-up
    plain, both = [], []
    for _ in range(args.repeats):  # interleaved, so load on the machine affects both alike
        start = time.perf_counter()
        forward_only()
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        scored()
        both.append(time.perf_counter() - start)
    p, b = statistics.median(plain), statistics.median(both)
    print(f"{len(samples)} samples, {args.repeats} repeats (median)")
    print(f"one batched forward pass:        {p:.3f} s")
    print(f"token statistics + loss + mink:  {b:.3f} s")
    print(f"ratio: {b / p:.3f}   (target <= 1.1)")


if __name__ == "__main__":
    main()
