"""The public plugin API: everything a distiller, attack or defense plugin needs, and nothing else.

Built-in plugins import only from here, exactly as a third-party plugin does, so the core can be rearranged
without breaking any plugin. This module is the **stable surface**: a name is removed or changes meaning only with
a version bump that says so. Anything imported from elsewhere in ``kdbench`` is internal and may move.

The names, by what a plugin does with them (docs/plugins.md documents each hook and Protocol):

- registering: :data:`hookimpl`, :data:`Register` (and the hooks in :mod:`kdbench.hookspecs`);
- the contracts: :class:`Attack`, :class:`Distiller`, :class:`Defense`, :class:`Plugin`, :class:`NoParams`;
- parameters: :func:`check_range` and the distillers' :class:`DistillerParams` / checks, raising
  :class:`ParameterError`; other errors a user can act on: :class:`KdbenchError`, :class:`PluginError`;
- attacks: :class:`AttackInputs`, :class:`Need`, :class:`TokenStats`, :class:`ScoringContext`,
  :class:`ShadowRecipe`, :func:`scoring_context`, :func:`token_stats_of`, :func:`mean_logprob`, :func:`lowest_k`;
- distillers: :class:`DistillJob`, :func:`distillation_loss`, the objectives, the teacher's outputs (cached
  :func:`teacher_outputs`, or live or cached as measured per cell: :func:`teacher_hook`), the sampling/replay
  strategies and the policy-gradient pieces on-policy distillers compose, and the training loop's
  building blocks (:func:`train_loop` and its :class:`LoopSettings`, :func:`sft_loss`, :func:`chain`,
  :func:`collate`, ...);
- defenses: :class:`DefenseBase`, :class:`DefenseContext`, :data:`STAGES`, :func:`resolve_attack`,
  :func:`flag_vulnerable`, :func:`write_marker`, :func:`inside`, :func:`load_model`, :func:`best_balanced_accuracy`,
  :func:`cache_keyword` (a wrapper passing its members' KV caches on).
"""

from __future__ import annotations

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError, ParameterError, PluginError
from kdbench.core.params import check_range
from kdbench.core.plugin import NoParams, Plugin
from kdbench.core.types import SCHEDULES, Encoded, TrainConfig
from kdbench.defense.base import STAGES, Defense, DefenseBase, DefenseContext
from kdbench.defense.helpers import flag_vulnerable, resolve_attack
from kdbench.distill.job import Distiller, DistillJob, distillation_loss
from kdbench.distill.params import (
    DistillerParams,
    ObjectiveName,
    check_lm_coef,
    check_objective,
    check_overrides,
    check_positive,
    check_probability,
)
from kdbench.distill.policy_gradient import importance_weights, ppo_loss, returns, rewards, token_log_probs, whiten
from kdbench.distill.sampling import PolicyPart, sample
from kdbench.distill.strategies import (
    REPLAY_CAPACITY,
    AdaptiveSGO,
    GroundTruth,
    MixedSampling,
    Observer,
    SGOState,
    split_off,
    teacher_samples,
)
from kdbench.distill.teacher_outputs import DEFAULT_TOP_K, TAIL_BOUND, teacher_hook, teacher_outputs
from kdbench.evaluation.metrics import best_balanced_accuracy
from kdbench.hookspecs import Register, hookimpl
from kdbench.models.defended import inside, write_marker
from kdbench.models.hub import load_model
from kdbench.scoring.context import ScoringContext, ShadowRecipe
from kdbench.scoring.inputs import Attack, AttackInputs, scoring_context, token_stats_of
from kdbench.scoring.needs import Need
from kdbench.scoring.tokenstats import TokenStats, lowest_k, mean_logprob
from kdbench.training.decoding import cache_keyword
from kdbench.training.loop import LoopSettings, LossFn, chain, collate, sft_loss, shifted, to_device, train_loop
from kdbench.training.objectives import OBJECTIVES, jsd_from_trl_beta, rkl

__all__ = [
    "DEFAULT_TOP_K",
    "OBJECTIVES",
    "REPLAY_CAPACITY",
    "SCHEDULES",
    "STAGES",
    "TAIL_BOUND",
    "AdaptiveSGO",
    "Attack",
    "AttackInputs",
    "Defense",
    "DefenseBase",
    "DefenseContext",
    "DistillJob",
    "Distiller",
    "DistillerParams",
    "Encoded",
    "Example",
    "GroundTruth",
    "KdbenchError",
    "LoopSettings",
    "LossFn",
    "MixedSampling",
    "Need",
    "NoParams",
    "ObjectiveName",
    "Observer",
    "ParameterError",
    "Plugin",
    "PluginError",
    "PolicyPart",
    "Register",
    "SGOState",
    "ScoringContext",
    "ShadowRecipe",
    "TokenStats",
    "TrainConfig",
    "best_balanced_accuracy",
    "cache_keyword",
    "chain",
    "check_lm_coef",
    "check_objective",
    "check_overrides",
    "check_positive",
    "check_probability",
    "check_range",
    "collate",
    "distillation_loss",
    "flag_vulnerable",
    "hookimpl",
    "importance_weights",
    "inside",
    "jsd_from_trl_beta",
    "load_model",
    "lowest_k",
    "mean_logprob",
    "ppo_loss",
    "resolve_attack",
    "returns",
    "rewards",
    "rkl",
    "sample",
    "scoring_context",
    "sft_loss",
    "shifted",
    "split_off",
    "teacher_hook",
    "teacher_outputs",
    "teacher_samples",
    "to_device",
    "token_log_probs",
    "token_stats_of",
    "train_loop",
    "whiten",
    "write_marker",
]
