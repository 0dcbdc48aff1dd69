"""What decoding an ``ensemble`` defense costs, measured side by side in one run: greedy continuations of the same
prompts from an ensemble of k copies of the default's shipped student base (the shape a board evaluates),
decoded (a) with the members' KV caches, as kdbench does now, and (b) reading the whole sequence again at every
step, as a logits-only model must (the ensemble's only path before). Prints both times, their ratio, and
whether the tokens agree (they must: the cache is a speed-up, not an approximation).

    PYTHONPATH=. python benchmarks/ensemble_decoding.py [--prompts 100] [--new-tokens 64] [--k 3]

Wall-clock on this machine's torch threads; the minimum of --repeats runs of each.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from kdbench.models.hub import load_model, shipped_dir
from kdbench.training.loop import generate
from plugins.defenses.ensemble import EnsembleLM
from tests.distill_helpers import LogitsOnly  # the ensemble without its cache: every step rereads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    base = shipped_dir("builtin:gpt2-synth-student")
    assert base is not None, "the shipped student base is part of kdbench; reinstall it"
    ensemble = EnsembleLM([load_model(base) for _ in range(args.k)]).eval()
    generator = torch.Generator().manual_seed(0)
    vocab = ensemble.config.vocab_size
    prompts = [torch.randint(3, vocab, (int(n),), generator=generator).tolist()
               for n in torch.randint(8, 48, (args.prompts,), generator=generator)]
    kw: dict[str, Any] = {"max_new_tokens": args.new_tokens, "pad_id": 0, "eos_id": -1, "device": torch.device("cpu")}

    def timed(model: Any) -> tuple[float, list[list[int]]]:
        best, out = float("inf"), []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = generate(model, prompts, **kw)
            best = min(best, time.perf_counter() - start)
        return best, out

    cached_s, cached = timed(ensemble)
    reread_s, reread = timed(LogitsOnly(ensemble))
    print(f"ensemble of {args.k} x gpt2-synth-student, {args.prompts} prompts, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"with the members' KV caches   {cached_s:8.2f} s")
    print(f"rereading every step          {reread_s:8.2f} s")
    print(f"speed-up                      {reread_s / cached_s:8.1f}x   tokens agree: {cached == reread}")


if __name__ == "__main__":
    main()
