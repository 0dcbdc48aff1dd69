"""What attacks cost, measured side by side in one run:

(a) every token-statistics attack together (the shared statistics pass, then each attack's scoring) divided by
    one plain batched forward pass over the same samples — target <= 1.15;
(b) adding one attack to a finished grid (the same `kdbench run` again with one more attack, everything else
    served from the cache) divided by the grid itself — target <= 5%: for an attack that needs only the shared
    statistics (default `mink++`) and for one that needs a pass of its own per target (default `lowercase`).

    PYTHONPATH=. python benchmarks/attack_cost.py [--samples 400] [--repeats 5] [--task synthetic-pii]
                                                  [--added mink++,lowercase]

Timings are wall-clock on one torch thread; (a) reports the minimum over repeats (noise from other processes
only ever adds time) and the median beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from kdbench.analysis.audit import AuditHost
from kdbench.core.cache import ArtifactCache
from kdbench.core.data import Example, PromptTemplate
from kdbench.core.params import parse_specs
from kdbench.core.registry import get_registry
from kdbench.models import hub as models
from kdbench.run.config import RunConfig
from kdbench.run.plan import resolve
from kdbench.run.runner import Runner
from kdbench.scoring.context import ScoringContext, external_model
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import Need
from kdbench.tasks import synthetic
from kdbench.testing import TINY_TASK_YAML
from kdbench.training.loop import batches

MODEL = "builtin:gpt2-tiny-teacher"  # the default task's teacher


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def token_statistics_attacks() -> str:
    """Every registered attack that needs nothing but the shared token statistics."""
    registry = get_registry()
    names = [n for n in registry.names("attacks") if registry.get("attacks", n).cls.needs == {Need.TOKEN_STATS}]
    return ",".join(names)


def part_a(root: Path, n_samples: int, repeats: int) -> None:
    records = synthetic.generate(seed=0, n_people=60, n_records=n_samples)
    template = PromptTemplate()
    tokenizer = models.train_bpe_tokenizer([template.prompt(e) + e.response for e in records], 2000)
    models.save_model(models.init_model(MODEL, tokenizer, 0), tokenizer, root / "model")
    target = external_model(str(root / "model"), "target")
    host = AuditHost(target, cache=ArtifactCache(root / "unused"), device=torch.device("cpu"), max_tokens=512)
    samples: list[Example] = records
    encoded = host.encode(samples)
    model, pad = host.load(target), tokenizer.pad_token_id
    names = token_statistics_attacks()
    attacks = resolve(get_registry(), "attacks", parse_specs(names))
    caches = iter(range(10**6))

    by_length = sorted(encoded, key=lambda e: len(e.input_ids))  # batched as the scoring passes batch

    def forward() -> None:
        with torch.no_grad():
            for _, batch in batches(by_length, host.batch_size, pad, generator=None):
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def suite() -> None:
        host.cache = ArtifactCache(root / f"cache-{next(caches)}")  # cold: the statistics are computed each time
        scoring = ScoringContext(host, target, samples)
        inputs = AttackInputs(samples=samples, token_stats=scoring.token_stats(), scoring=scoring)
        for attack in attacks:
            attack.instance.score(inputs)

    forward()  # warm-up
    plain, full = [], []
    for _ in range(repeats):  # interleaved, so both see the same background load
        plain += timed(forward, 1)
        full += timed(suite, 1)
    tokens = sum(len(e.input_ids) for e in encoded)
    print(f"(a) {len(samples)} samples, {tokens} tokens, {MODEL} (vocabulary {len(tokenizer)}), "
          f"batch {host.batch_size}")
    print(f"    one batched forward pass:           min {min(plain):.3f}s  median {statistics.median(plain):.3f}s")
    print(f"    token-statistics attacks ({names}): min {min(full):.3f}s  median {statistics.median(full):.3f}s")
    print(f"    ratio: {min(full) / min(plain):.3f} (median {statistics.median(full) / statistics.median(plain):.3f}); "
          "target <= 1.15")


def part_b(root: Path, task: str, added: list[str]) -> None:
    """The grid runs the token-statistics attacks but the first of ``added``; each added attack is then timed
    alone: the same grid plus that one attack, everything else served from the cache."""
    if task == "tiny":
        (root / "tiny.yaml").write_text(TINY_TASK_YAML)
        task = str(root / "tiny.yaml")
    cache = ArtifactCache(root / "grid-cache")
    attacks = ",".join(a for a in token_statistics_attacks().split(",") if a != added[0])
    config = RunConfig(distillers=parse_specs("kd"), attacks=parse_specs(attacks), tasks=(task,),
                       out=root / "grid", device="cpu")
    start = time.perf_counter()
    Runner(config, get_registry(), cache=cache).run()
    grid = time.perf_counter() - start
    print(f"(b) grid: task {Path(task).stem}, distiller kd, attacks {attacks}: {grid:.2f}s "
          f"({len(cache.builds)} artifacts built)")
    for attack in added:
        built = len(cache.builds)
        start = time.perf_counter()
        Runner(replace(config, attacks=parse_specs(f"{attacks},{attack}"), out=root / f"plus-{attack}"),
               get_registry(), cache=cache).run()
        extra = time.perf_counter() - start
        new = ", ".join(b.split("/")[0] for b in cache.builds[built:]) or "none"
        print(f"    the same grid plus `{attack}`: {extra:.2f}s = {extra / grid:.1%} of the grid "
              f"({len(cache.builds) - built} artifacts built: {new}); target <= 5%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=400, help="attack samples for (a) (the default task: 400)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--task", default="synthetic-pii", help="the grid's task in (b); `tiny`: the test-sized one")
    parser.add_argument("--added", default="mink++,lowercase",
                        help="attacks added, one at a time, to the finished grid in (b)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        part_a(Path(tmp), args.samples, args.repeats)
        part_b(Path(tmp), args.task, args.added.split(","))


if __name__ == "__main__":
    main()
