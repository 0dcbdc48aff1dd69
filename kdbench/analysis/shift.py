"""Distribution shift of a task's attack samples: the ``blind`` reference baseline (no model) on exactly the members
and non-members ``kdbench run`` attacks. Its AUC CI excluding 0.5 means the two sets can be told apart by their
text alone, so membership AUCs on that task are confounded (Das et al. 2024; Meeus et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.core.params import parse_specs
from kdbench.core.registry import Registry
from kdbench.evaluation import metrics
from kdbench.run.cells import attack_samples
from kdbench.run.plan import resolve
from kdbench.scoring.inputs import AttackInputs
from kdbench.tasks.manifest import Task
from kdbench.tasks.splits import Splits

CHANCE = 0.5


@dataclass(frozen=True)
class Shift:
    """The blind baseline's AUC on a task's attack samples."""

    baseline: str
    auc: float
    auc_ci: tuple[float, float]
    n_members: int
    n_nonmembers: int

    @property
    def confounded(self) -> bool:
        """Whether the CI lies above chance: members and non-members differ in distribution.

        One-sided: a shift the classifier can learn raises its AUC. An out-of-fold AUC *below* chance is the known
        negative bias of cross-validation when there is no signal (each training fold holds the complement of the
        test fold's class balance), not a shift, so it does not warn."""
        return self.auc_ci[0] > CHANCE


def measure_shift(task: Task, splits: Splits, registry: Registry, baseline: str = "blind") -> Shift:
    """Run the reference baseline ``baseline`` (a spec such as ``blind:folds=10``) on the task's attack samples."""
    members, nonmembers = attack_samples(task, splits)
    (attack,) = resolve(registry, "attacks", parse_specs(baseline)[:1])
    labels = np.arange(len(members) + len(nonmembers)) < len(members)
    scores = np.asarray(attack.instance.score(AttackInputs(samples=members + nonmembers, membership=labels)))
    m = metrics.membership_metrics(scores[labels], scores[~labels], seed=task.seed,
                                   n_resamples=task.evaluation.bootstrap)
    return Shift(attack.label, m.auc, (float(m.auc_ci[0]), float(m.auc_ci[1])), len(members), len(nonmembers))
