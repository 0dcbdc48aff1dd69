"""RMIA: its score against the paper's formula on fixed statistics (worked by hand, and by a second, pairwise
implementation), and end to end in `kdbench run`, where its reference models are LiRA's cached shadows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from kdbench_plugins.attacks.rmia import RMIAParams, rmia_scores

from kdbench.cli import main
from kdbench.core.errors import KdbenchError, ParameterError
from kdbench.results.records import load_records
from tests.attack_helpers import MAX_TOKENS, SHADOW, AttackWorld

# Probabilities Pr(t|θ), chosen so that every ratio below is a short hand computation.
TARGET_X = [0.8, 0.3]  # the target on x0, x1
REFS_X = [[0.6, 0.2], [0.4, 0.5]]  # reference 0 trained on x0 (IN), reference 1 on x1
IN_MASK = [[True, False], [False, True]]
TARGET_Z = [0.5, 0.2, 0.9]
REFS_Z = [[0.5, 0.3, 0.6], [0.3, 0.1, 0.6]]  # OUT for both references: means 0.4, 0.2, 0.6
A = 0.5


def paper_rmia(online: bool, a: float, gamma: float) -> list[float]:
    """The paper's test written out pair by pair: Pr(t) the references' mean (z has OUT references only);
    offline only OUT references, with ½((1 + a)·Pr_OUT + (1 − a)); LR = (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) ≥ γ."""
    def pr_out(values: list[float]) -> float:
        mean = sum(values) / len(values)
        return mean if online else 0.5 * ((1 + a) * mean + (1 - a))

    scores = []
    for i, px in enumerate(TARGET_X):
        refs = [REFS_X[r][i] for r in range(2)]
        outs = [REFS_X[r][i] for r in range(2) if not IN_MASK[r][i]]
        pr_x = sum(refs) / len(refs) if online else pr_out(outs)  # online: IN and OUT references
        wins = 0
        for j, pz in enumerate(TARGET_Z):
            pr_z = pr_out([REFS_Z[r][j] for r in range(2)])
            wins += (px / pr_x) / (pz / pr_z) >= gamma
        scores.append(wins / len(TARGET_Z))
    return scores


def scores(online: bool, a: float, gamma: float) -> np.ndarray:
    return rmia_scores(np.log(TARGET_X), np.log(REFS_X), np.array(IN_MASK), np.log(TARGET_Z), np.log(REFS_Z),
                       online=online, a=a, gamma=gamma)


@pytest.mark.parametrize(("online", "gamma", "by_hand"), [
    # online: Pr(x0) = (0.6+0.4)/2 = 0.5, ratio 1.6; Pr(x1) = 0.35, ratio 6/7. Pr(z) = 0.4, 0.2, 0.6: ratios
    # 1.25, 1, 1.5. LR(x0, ·) = 1.28, 1.6, 1.07; LR(x1, ·) = 0.69, 0.86, 0.57.
    (True, 0.8, [1.0, 1 / 3]),
    (True, 1.5, [1 / 3, 0.0]),
    # offline: Pr(x0) = ½(1.5·0.4 + 0.5) = 0.55, ratio 16/11; Pr(x1) = ½(1.5·0.2 + 0.5) = 0.4, ratio 0.75.
    # Pr(z) = ½(1.5·mean + 0.5) = 0.55, 0.4, 0.7: ratios 10/11, 0.5, 9/7.
    # LR(x0, ·) = 1.6, 2.91, 1.13; LR(x1, ·) = 0.825, 1.5, 0.583.
    (False, 1.0, [1.0, 1 / 3]),
    (False, 1.2, [2 / 3, 1 / 3]),
])
def test_rmia_score_is_the_fraction_of_population_samples_dominated(online: bool, gamma: float,
                                                                    by_hand: list[float]) -> None:
    assert paper_rmia(online, A, gamma) == pytest.approx(by_hand)
    np.testing.assert_allclose(scores(online, A, gamma), by_hand, rtol=1e-12)


def test_rmia_agrees_with_the_pairwise_test_over_a_grid_of_a_and_gamma() -> None:
    for online in (True, False):
        for a in (0.0, 0.3, 1.0):
            for gamma in (0.5, 1.0, 1.7, 3.0):
                np.testing.assert_allclose(scores(online, a, gamma), paper_rmia(online, a, gamma), rtol=1e-12)


def test_rmia_counts_a_likelihood_ratio_equal_to_gamma() -> None:
    """Score = Pr_z(LR ≥ γ): a z whose ratio equals x's counts (offline, a = 1: Pr = Pr_OUT exactly)."""
    got = rmia_scores(np.log([0.5]), np.log([[0.4], [0.4]]), np.array([[True], [False]]), np.log([0.5, 0.9]),
                      np.log([[0.4, 0.4], [0.4, 0.4]]), online=False, a=1.0, gamma=1.0)
    assert got.tolist() == [0.5]


@pytest.mark.parametrize("bad", [{"n_ref": 3}, {"n_ref": 0}, {"a": 1.5}, {"gamma": 0.0}, {"n_z": 0}])
def test_rmia_refuses_bad_parameters(bad: dict[str, float]) -> None:
    with pytest.raises(ParameterError, match="rmia"):
        RMIAParams(**bad)  # type: ignore[arg-type]


def test_population_larger_than_the_text_is_refused(world: AttackWorld) -> None:
    with pytest.raises(KdbenchError, match="population samples"):
        world.scoring().population(len(world.reference) + 1, 0)
    assert len(world.scoring().population(4, 0)) == 4


def _run(tiny_task: Path, out: Path, attack: str, cache_dir: Path) -> dict[str, list[str]]:
    result = CliRunner().invoke(
        main, ["run", "--task", str(tiny_task), "--distiller", "kd", "--attack", attack, "--out", str(out)],
        env={"KDBENCH_CACHE_DIR": str(cache_dir)},
    )
    assert result.exit_code == 0, result.output
    cache: dict[str, list[str]] = json.loads((out / "run.json").read_text())["cache"]
    return cache


def test_rmia_in_a_run_reuses_liras_shadows(small_run_dir: Path, tiny_task: Path, tmp_path: Path,
                                            cache_dir: Path) -> None:
    """After `--attack lira`, `--attack rmia` trains no model: its references are LiRA's cached shadows; it only
    scores the target and the shadows on the population (the eval split)."""
    first = _run(tiny_task, tmp_path / "lira", "lira", cache_dir)
    shadows = {key for key in first["builds"] + first["hits"] if key.startswith("model/")}
    second = _run(tiny_task, tmp_path / "rmia", "rmia", cache_dir)
    assert not [key for key in second["builds"] if key.startswith("model/")]
    assert shadows <= set(second["hits"])
    assert any(key.startswith("token_stats/") for key in second["builds"])  # the population passes
    records = [r for r in load_records([tmp_path / "rmia"]) if not r.get("reference")]  # blind runs by default
    assert {(r["target"], r["attack"]) for r in records} == {(t, "rmia") for t in ("teacher", "baseline", "student")}
    for record in records:
        assert record["fpr_resolution"] == pytest.approx(1 / 30)
        assert record["attack_params"]["n_ref"] == 4
    (scores_file,) = [p for p in (tmp_path / "rmia" / "scores").iterdir() if p.name.startswith("teacher")]
    values = [json.loads(line)["rmia"] for line in scores_file.read_text().splitlines()[1:]]
    assert len(values) == 60 and all(0.0 <= v <= 1.0 for v in values)
    # 10 population samples (the tiny task's eval split): every score is a multiple of 1/10
    np.testing.assert_allclose(np.round(np.array(values) * 10), np.array(values) * 10, atol=1e-9)


def test_rmia_in_an_audit_with_base_and_reference_text(world: AttackWorld, tmp_path: Path) -> None:
    """`kdbench audit`: `--base` trains the references (as LiRA's shadows), `--reference-text` is the population; the
    16 non-members resolve neither low FPR, so both TPR columns are marked."""
    recipe = ",".join(f"{k}={v}" for k, v in SHADOW.items())
    args = ["audit", "--model", str(world.memorizer), "--members", str(world.file("members.txt")), "--nonmembers",
            str(world.file("nonmembers.txt")), "--max-tokens", str(MAX_TOKENS), "--bootstrap", "50",
            "--attack", f"rmia:n_ref=2,{recipe}", "--base", "builtin:gpt2-micro"]  # two references: the cheapest
    env = {"KDBENCH_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    missing = CliRunner().invoke(main, args, env=env)
    assert missing.exit_code != 0 and "--reference-text FILE" in missing.output  # no population: refused up front
    result = CliRunner().invoke(main, [*args, "--reference-text", str(world.file("reference.txt"))], env=env)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.lstrip("│ ").startswith("rmia"))
    assert row.count("*") == 2
    assert "TPR at 0.1% and 1% FPR is the TPR at zero false positives" in " ".join(result.output.split())
