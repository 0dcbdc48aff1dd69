"""The scoring context: one pass per need, cached per (model, samples, variant), shared by every attack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import KdbenchError
from kdbench.core.params import parse_specs
from kdbench.core.registry import Resolved, get_registry
from kdbench.evaluation.attacks import run_attacks
from kdbench.run.plan import resolve
from kdbench.scoring.context import ScoringContext
from kdbench.scoring.inputs import AttackInputs, scoring_context
from kdbench.scoring.needs import Need
from kdbench.scoring.tokenstats import mean_logprob
from tests.attack_helpers import AttackWorld, one_thread  # noqa: F401 - autouse fixture

CHEAP = ("loss,zlib,mink,mink++,lowercase,neighbourhood:n_neighbours=2,recall,dc-pdd,gradnorm,mope:copies=2")


def attacks(spec: str) -> list[Resolved]:
    return resolve(get_registry(), "attacks", parse_specs(spec))


def evaluate(world: AttackWorld, cache: ArtifactCache, spec: str) -> dict[str, np.ndarray]:
    host = world.host(cache=cache)
    scoring = ScoringContext(host, host.target, world.members + world.nonmembers)
    return run_attacks(attacks(spec), scoring, len(world.members), seed=0, n_resamples=20)[1]


def test_a_second_evaluation_computes_nothing_new(world: AttackWorld, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    spec = f"{CHEAP},ref:model={world.outsider}"
    first = evaluate(world, cache, spec)
    built = list(cache.builds)
    assert built
    second = evaluate(world, cache, spec)  # a new host and context: only the on-disk cache is shared
    assert cache.builds == built
    assert len(cache.hits) >= len(built)
    for label, scores in first.items():
        np.testing.assert_array_equal(second[label], scores)


def test_adding_an_attack_computes_only_its_own_needs(world: AttackWorld, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    evaluate(world, cache, "loss,mink")
    assert [b.split("/")[0] for b in cache.builds] == ["token_stats"]  # one batched pass for both
    before = len(cache.builds)
    evaluate(world, cache, "loss,mink,zlib,mink++")  # token statistics only: nothing to compute
    assert len(cache.builds) == before
    evaluate(world, cache, "loss,mink,zlib,mink++,lowercase")  # one more pass, on the lowercased texts
    assert [b.split("/")[0] for b in cache.builds[before:]] == ["token_stats"]


def test_attacks_sharing_a_need_compute_it_once(world: AttackWorld, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    evaluate(world, cache, "neighbourhood:n_neighbours=2,neighbourhood:n_neighbours=2,seed=0,mope:copies=2,"
             "mope:copies=2,sigma=0.005")
    kinds = sorted(b.split("/")[0] for b in cache.builds)
    assert kinds == ["perturbed", "perturbed", "token_stats", "token_stats"]  # target, neighbours; 2 copies


def test_variants_never_collide_with_the_plain_texts(world: AttackWorld, tmp_path: Path) -> None:
    """Content hashes are case-folded; the scoring keys hash exact token ids, so lowercasing is a new artifact."""
    scoring = world.scoring(world.host(cache=ArtifactCache(tmp_path)))
    plain, lower = mean_logprob(scoring.token_stats()), mean_logprob(scoring.lowercase_stats())
    assert not np.allclose(plain, lower)


def test_perturbation_restores_the_weights_exactly(world: AttackWorld, tmp_path: Path) -> None:
    scoring = world.scoring(world.host(cache=ArtifactCache(tmp_path)))
    before = {k: v.clone() for k, v in scoring.model().state_dict().items()}
    changed = scoring.perturbed_logprob(0.05, 1)
    assert not np.allclose(changed, scoring.mean_logprob())
    scoring.gradient_norms(2.0, "mean")
    after = scoring.model().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and p.requires_grad for p in scoring.model().parameters())


def test_needs_a_host_cannot_provide_are_refused_before_any_work(world: AttackWorld, tmp_path: Path) -> None:
    host = world.host(cache=ArtifactCache(tmp_path))
    host.reference_text = None
    with pytest.raises(KdbenchError, match=r"'dc-pdd' needs token_frequencies \(pass --reference-text FILE"):
        host.check_needs([(a.label, a.instance.needs) for a in attacks("loss,dc-pdd")])
    with pytest.raises(KdbenchError, match="does not know"):
        host.check_needs([("mine", frozenset({"telepathy"}))])
    assert not host.cache.builds


def test_an_attack_outside_an_evaluator_gets_a_clear_error(world: AttackWorld) -> None:
    with pytest.raises(KdbenchError, match="needs a scoring context"):
        scoring_context(AttackInputs(samples=world.members), "lowercase")
    assert Need.TEXT_VARIANTS in attacks("lowercase")[0].instance.needs
