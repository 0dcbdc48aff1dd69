"""SURP's definition on hand-made token statistics, and kdbench's contract checks on the installed plugin."""

from __future__ import annotations

import numpy as np
import pytest
from kdbench_surp import Surp, SurpParams, surp_score

from kdbench.api import AttackInputs, ParameterError, TokenStats
from kdbench.testing import check_attack, check_registered

LOGPROB = np.array([-0.1, -5.0, -6.0, -0.2, -4.0])
ENTROPY = np.array([0.5, 0.5, 3.0, 0.5, 1.0])


def test_mean_logprob_of_low_entropy_tokens_among_the_lowest() -> None:
    # The 3 lowest tokens are -6 (entropy 3.0: uncertain, not surprising), -5 and -4 (certain but wrong).
    assert surp_score(LOGPROB, ENTROPY, k=0.6, max_entropy=2.0) == pytest.approx(-4.5)


def test_no_surprising_token_falls_back_to_min_k() -> None:
    assert surp_score(LOGPROB, ENTROPY + 10, k=0.6, max_entropy=2.0) == pytest.approx(-5.0)


def test_at_least_one_token_counts() -> None:
    assert surp_score(LOGPROB, ENTROPY, k=0.01, max_entropy=5.0) == pytest.approx(-6.0)


def test_score_reads_entropy_from_mean_logprob() -> None:
    values = {"logprob": np.concatenate([LOGPROB, LOGPROB]), "mean_logprob": -np.concatenate([ENTROPY, ENTROPY + 10]),
              "var_logprob": np.zeros(10)}
    stats = TokenStats(offsets=np.array([0, 5, 10]), values=values)
    scores = Surp(SurpParams(k=0.6)).score(AttackInputs(samples=[None, None], token_stats=stats))  # type: ignore[list-item]
    np.testing.assert_allclose(scores, [-4.5, -5.0])


@pytest.mark.parametrize("bad", [{"k": 0.0}, {"k": 1.5}, {"max_entropy": -1.0}])
def test_bad_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ParameterError):
        SurpParams(**bad)


def test_entry_point_registers_it() -> None:
    info = check_registered("attack", "surp")
    assert info.cls is Surp
    assert info.distribution == "kdbench-surp"


@pytest.mark.parametrize("params", [None, SurpParams(k=0.5, max_entropy=1.0)])
def test_contract(params: SurpParams | None) -> None:
    check_attack(Surp, params)  # registration, parameters, scoring, orientation, determinism


def test_members_score_higher_on_the_kits_teacher(kdbench_attack_inputs: tuple[AttackInputs, np.ndarray]) -> None:
    inputs, labels = kdbench_attack_inputs
    scores = Surp(SurpParams()).score(inputs)
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
