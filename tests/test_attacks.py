"""Every attack's per-sample scores against its definition, computed here independently from a tiny model's
logits (unbatched, in float64), and every attack's orientation (higher = member) on a memorising model."""

from __future__ import annotations

import copy
import math
import random
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from kdbench_plugins.attacks.lira import lira_scores
from scipy.stats import norm

from kdbench.core.params import build_params, parse_specs
from kdbench.core.registry import get_registry
from kdbench.models import hub as models
from kdbench.scoring.context import ScoringContext, ShadowRecipe
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import is_reference
from kdbench.scoring.variants import neighbour_rng, neighbour_text
from tests.attack_helpers import (
    MAX_TOKENS,
    SHADOW,
    AttackWorld,
    auc,
    log_softmax,
    one_thread,  # noqa: F401 - autouse fixture
    token_logprobs,
)

RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def subset(world: AttackWorld) -> ScoringContext:
    """Three members and three non-members: enough to compare per-sample scores."""
    return world.scoring(samples=world.members[:3] + world.nonmembers[:3])


@pytest.fixture(scope="module")
def model(world: AttackWorld) -> Any:
    return models.load_model(world.memorizer)


def attack(name: str, **params: Any) -> Any:
    info = get_registry().get("attacks", name)
    return info.cls(build_params(info.cls.Params, tuple((k, str(v)) for k, v in params.items()), owner=name))


def scores(scoring: ScoringContext, name: str, **params: Any) -> np.ndarray:
    inputs = AttackInputs(samples=scoring.samples, token_stats=scoring.token_stats(), scoring=scoring)
    return np.asarray(attack(name, **params).score(inputs), dtype=np.float64)


def texts(scoring: ScoringContext) -> list[str]:
    return [e.response for e in scoring.samples]


def mean_lp(world: AttackWorld, model: Any, strings: list[str]) -> np.ndarray:
    return np.array([token_logprobs(model, e).mean() for e in world.encode(strings)])


def bottom(values: np.ndarray, k: float = 0.2) -> float:
    return float(np.sort(values)[: max(1, int(len(values) * k))].mean())


def test_loss_zlib_mink_and_minkpp(world: AttackWorld, subset: ScoringContext, model: Any) -> None:
    encoded = world.encode(texts(subset))
    logprobs = [token_logprobs(model, e) for e in encoded]
    expected_zlib = [lp.mean() / len(zlib.compress(t.encode("utf-8"))) for lp, t in zip(logprobs, texts(subset),
                                                                                         strict=True)]
    plus = []
    for e, lp in zip(encoded, logprobs, strict=True):
        logq = log_softmax(model, e)
        mu = (logq.exp() * logq).sum(-1).numpy()
        sigma = np.sqrt(((logq.exp() * logq**2).sum(-1) - torch.tensor(mu) ** 2).numpy())
        plus.append(bottom((lp - mu) / sigma))
    np.testing.assert_allclose(scores(subset, "loss"), [lp.mean() for lp in logprobs], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores(subset, "zlib"), expected_zlib, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores(subset, "mink"), [bottom(lp) for lp in logprobs], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores(subset, "mink", use_probs=True), [bottom(np.exp(lp)) for lp in logprobs],
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores(subset, "mink++"), plus, rtol=1e-3, atol=1e-4)


def test_zlib_argmax_quirk_compresses_the_greedy_decode(world: AttackWorld, subset: ScoringContext,
                                                        model: Any) -> None:
    expected = []
    for e in world.encode(texts(subset)):
        decoded = world.tokenizer.decode(log_softmax(model, e).argmax(-1).tolist())
        expected.append(token_logprobs(model, e).mean() / len(zlib.compress(decoded.encode("utf-8"))))
    np.testing.assert_allclose(scores(subset, "zlib", argmax_decode=True), expected, rtol=RTOL, atol=ATOL)


def test_lowercase_difference_and_ratio(world: AttackWorld, subset: ScoringContext, model: Any) -> None:
    nll = -mean_lp(world, model, texts(subset))
    nll_lower = -mean_lp(world, model, [t.lower() for t in texts(subset)])
    np.testing.assert_allclose(scores(subset, "lowercase"), nll_lower - nll, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scores(subset, "lowercase", mode="ratio"), -nll / nll_lower, rtol=RTOL, atol=ATOL)


class ScriptedRandom(random.Random):
    """An RNG that returns the given draws in order, so neighbour_text can be checked by hand."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_neighbour_text_swaps_or_deletes_the_chosen_words() -> None:
    # words 0 and 2 are chosen (draws < rate); edited from the end: word 2 swapped with 3, then word 0 deleted
    assert neighbour_text("a b  c d", 0.5, ScriptedRandom([0.1, 0.9, 0.2, 0.9, 0.3, 0.7])) == "b d c"
    # nothing chosen: one forced edit at randrange's pick; the last word cannot swap, so it is deleted
    rng = ScriptedRandom([0.9, 0.9, 0.9, 0.1])
    rng.randrange = lambda n: n - 1  # type: ignore[method-assign]
    assert neighbour_text("a b c", 0.5, rng) == "a b"
    assert neighbour_text("single", 0.5, ScriptedRandom([])) == "single"


def test_neighbourhood(world: AttackWorld, subset: ScoringContext, model: Any) -> None:
    """The neighbours come from neighbour_text (checked by hand above); the score from a separate definition."""
    n, rate, seed = 3, 0.2, 1
    expected = []
    for text in texts(subset):
        neighbours = [neighbour_text(text, rate, neighbour_rng(text, seed, j)) for j in range(n)]
        assert all(nb != text for nb in neighbours)
        assert neighbours == [neighbour_text(text, rate, neighbour_rng(text, seed, j)) for j in range(n)]
        expected.append(mean_lp(world, model, [text])[0] - mean_lp(world, model, neighbours).mean())
    got = scores(subset, "neighbourhood", n_neighbours=n, rate=rate, seed=seed)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_recall_conditions_on_a_nonmember_prefix(world: AttackWorld, subset: ScoringContext, model: Any) -> None:
    """MIMIR's layout: ``tokenizer(prefix)`` then every token of the text (no BOS between), all scored; the
    prefix (kdbench: ``shots`` reference texts drawn with ``seed``, each followed by a blank line) keeps its end
    when it must be cut to fit the context."""
    shots, seed = 2, 4
    prefix_text = "".join(e.response + "\n\n" for e in random.Random(seed).sample(world.reference, shots))
    prefix = world.tokenizer(prefix_text)["input_ids"]
    expected = []
    for text, e in zip(texts(subset), world.encode(texts(subset)), strict=True):
        body = world.tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
        room = model.config.n_positions - len(body)
        kept = prefix[max(0, len(prefix) - room):]
        ids = torch.tensor([kept + body])
        with torch.no_grad():
            logq = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        conditional = logq[torch.arange(len(kept) - 1, len(kept) + len(body) - 1), torch.tensor(body)].mean()
        expected.append(float(conditional) / token_logprobs(model, e).mean())
    np.testing.assert_allclose(scores(subset, "recall", shots=shots, seed=seed), expected, rtol=RTOL, atol=ATOL)


def test_ref_subtracts_the_reference_models_loss(world: AttackWorld, subset: ScoringContext, model: Any) -> None:
    reference = models.load_model(world.outsider)
    expected = mean_lp(world, model, texts(subset)) - mean_lp(world, reference, texts(subset))
    got = scores(subset, "ref", model=str(world.outsider))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_dcpdd_calibrates_by_reference_token_frequencies(world: AttackWorld, subset: ScoringContext,
                                                          model: Any) -> None:
    ids = [t for e in world.encode([r.response for r in world.reference]) for t in e.input_ids]
    vocabulary = len(world.tokenizer)
    counts = np.bincount(ids, minlength=vocabulary)
    frequency = (counts + 1) / (len(ids) + vocabulary)
    expected = []
    for e in world.encode(texts(subset)):
        alpha = np.minimum(-np.exp(token_logprobs(model, e)) * np.log(frequency[list(e.response_ids)]), 0.01)
        first = [e.response_ids.index(t) for t in dict.fromkeys(e.response_ids)]
        expected.append(alpha[first].mean())
    np.testing.assert_allclose(scores(subset, "dc-pdd"), expected, rtol=RTOL, atol=ATOL)


def test_gradnorm_mean_and_global(world: AttackWorld, subset: ScoringContext, model: Any) -> None:
    copy_ = copy.deepcopy(model).eval()
    params = list(copy_.parameters())
    mean_norms, global_norms = [], []
    for e in world.encode(texts(subset)):
        ids = torch.tensor([e.input_ids])
        logq = torch.log_softmax(copy_(input_ids=ids).logits[0, :-1], -1)[len(e.prompt_ids) - 1 :]
        loss = -logq.gather(-1, torch.tensor(e.response_ids).unsqueeze(-1)).mean()
        grads = torch.autograd.grad(loss, params)
        mean_norms.append(float(np.mean([g.norm(2).item() for g in grads])))
        global_norms.append(math.sqrt(sum(float((g**2).sum()) for g in grads)))
    np.testing.assert_allclose(scores(subset, "gradnorm"), -np.array(mean_norms), rtol=1e-3)
    np.testing.assert_allclose(scores(subset, "gradnorm", reduce="global"), -np.array(global_norms), rtol=1e-3)
    assert all(p.grad is None for p in model.parameters())


def test_mope_perturbs_every_weight_with_seeds_1_to_k(world: AttackWorld, subset: ScoringContext,
                                                      model: Any) -> None:
    sigma, copies = 0.02, 2
    strings = texts(subset)
    clean = mean_lp(world, model, strings)
    perturbed = []
    for seed in range(1, copies + 1):
        noisy = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * sigma)
        perturbed.append(mean_lp(world, noisy, strings))
    expected = clean - np.mean(perturbed, axis=0)  # = mean_k NLL(θ+ε_k) − NLL(θ)
    np.testing.assert_allclose(scores(subset, "mope", copies=copies, sigma=sigma), expected, rtol=1e-3, atol=1e-6)


def test_mope_default_sigma_follows_the_target_role(subset: ScoringContext) -> None:
    got = scores(subset, "mope", copies=1)  # an audited model is fit on its data directly: σ = 0.005
    np.testing.assert_allclose(got, subset.mope(0.005, 1))


def test_lira_scores_are_gaussian_likelihood_ratios() -> None:
    rng = np.random.default_rng(0)
    n_shadow, n = 6, 5
    in_mask = np.zeros((n_shadow, n), dtype=bool)
    for s in range(0, n_shadow, 2):
        in_mask[s, rng.permutation(n)[:2]] = True
        in_mask[s + 1] = ~in_mask[s]
    shadows = rng.normal(size=(n_shadow, n)) + in_mask
    target = rng.normal(size=n)
    expected_online, expected_offline, expected_fixed = [], [], []
    pooled_in = np.sqrt(sum(((shadows[in_mask[:, i], i] - shadows[in_mask[:, i], i].mean()) ** 2).sum()
                            for i in range(n)) / sum(in_mask[:, i].sum() - 1 for i in range(n)))
    pooled_out = np.sqrt(sum(((shadows[~in_mask[:, i], i] - shadows[~in_mask[:, i], i].mean()) ** 2).sum()
                             for i in range(n)) / sum((~in_mask[:, i]).sum() - 1 for i in range(n)))
    for i in range(n):
        ins, outs = shadows[in_mask[:, i], i], shadows[~in_mask[:, i], i]
        expected_online.append(norm.logpdf(target[i], ins.mean(), ins.std(ddof=1))
                               - norm.logpdf(target[i], outs.mean(), outs.std(ddof=1)))
        expected_offline.append((target[i] - outs.mean()) / pooled_out)
        expected_fixed.append(norm.logpdf(target[i], ins.mean(), pooled_in)
                              - norm.logpdf(target[i], outs.mean(), pooled_out))
    np.testing.assert_allclose(lira_scores(target, shadows, in_mask, True, False), expected_online, rtol=1e-9)
    np.testing.assert_allclose(lira_scores(target, shadows, in_mask, False, True), expected_offline, rtol=1e-9)
    np.testing.assert_allclose(lira_scores(target, shadows, in_mask, True, True), expected_fixed, rtol=1e-9)


def test_lira_shadows_train_on_complementary_halves(world: AttackWorld) -> None:
    scoring = world.scoring()
    in_mask, logprobs = scoring.shadow_logprobs(4, 0, ShadowRecipe(**SHADOW))
    assert in_mask.shape == logprobs.shape == (4, len(scoring.samples))
    assert (in_mask.sum(axis=0) == 2).all() and (in_mask[0] == ~in_mask[1]).all()
    assert (in_mask.sum(axis=1) == len(scoring.samples) // 2).all()
    # each shadow fits its own half better than the other half
    assert all(logprobs[s][in_mask[s]].mean() > logprobs[s][~in_mask[s]].mean() for s in range(4))


ORIENTATION: dict[str, dict[str, Any]] = {
    "loss": {}, "zlib": {}, "mink": {}, "mink++": {}, "lowercase": {}, "neighbourhood": {"n_neighbours": 4},
    "recall": {}, "dc-pdd": {}, "gradnorm": {}, "mope": {}, "ref": {}, "lira": SHADOW, "rmia": SHADOW,
}


def test_every_registered_attack_is_covered() -> None:
    """Every membership attack; reference baselines (blind) see no model and are tested in test_blind.py."""
    registry = get_registry()
    names = {n for n in registry.names("attacks") if not is_reference(registry.get("attacks", n).cls.needs)}
    assert names == set(ORIENTATION)


@pytest.mark.parametrize("name", sorted(ORIENTATION))
def test_orientation_higher_means_member(name: str, world: AttackWorld) -> None:
    """On a model that memorised the members, every attack scores members higher (AUC well above 0.5)."""
    params = dict(ORIENTATION[name])
    if name == "ref":
        params["model"] = str(world.outsider)
    scoring = world.scoring()
    got = scores(scoring, name, **params)
    assert np.isfinite(got).all()
    assert auc(got, len(world.members)) > 0.75, f"{name}: AUC {auc(got, len(world.members)):.3f}"


def test_attack_names_with_punctuation_parse() -> None:
    specs = parse_specs("mink++:k=0.1,dc-pdd:a=0.02")
    assert [(s.name, s.raw) for s in specs] == [("mink++", (("k", "0.1"),)), ("dc-pdd", (("a", "0.02"),))]
