"""Summaries of a results DataFrame (:mod:`kdbench.results.dataframe`): what ``kdbench results`` and the closing table
of ``kdbench run`` show.

Replicates (seeds, and runs of the same cell) are aggregated as the leaderboard does: the mean, the spread
(standard deviation and min-max over replicates) and the CI as the mean of the replicates' bootstrap CIs. With one
replicate these are the record's own values. Reference baselines (``reference`` records, e.g. ``blind``) are
summarised beside the attacks but never chosen as a target's strongest attack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

TARGET_KEYS = ("task", "protocol", "target", "cell", "distiller_label", "defense_label", "model")
"""What one target model of a (possibly multi-seed) grid is."""

_MEANS = {
    "auc": "auc", "auc_lo": "auc_lo", "auc_hi": "auc_hi", "tpr_at_1pct_fpr": "tpr_at_1pct_fpr",
    "rouge_l": "rouge_l", "rouge_l_lo": "rouge_l_lo", "rouge_l_hi": "rouge_l_hi",
    "memorization.members": "mem_members", "memorization.nonmembers": "mem_nonmembers",
    "fpr_resolution": "fpr_resolution", "balanced_accuracy": "balanced_accuracy", "member_tpr": "member_tpr",
    "member_precision": "member_precision",
    "pii_leakage.members": "pii_members", "pii_leakage.nonmembers": "pii_nonmembers",
    "pii_leakage.members_best_of_k": "pii_members_k", "pii_leakage.nonmembers_best_of_k": "pii_nonmembers_k",
    "pii_leakage.k": "pii_k",
}
VALUES = ("auc", "tpr_at_1pct_fpr", "balanced_accuracy", "member_tpr", "member_precision")
"""What the per-attack view can show: the AUC, or a thresholded metric ([C]'s member-specific ones among them)."""
_TARGET_ORDER = {"teacher": 0, "baseline": 1, "student": 2}


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, attack) with its replicates aggregated: ``n``, the means of ``_MEANS``, ``auc_sd``
    (0 for one replicate), ``auc_min`` and ``auc_max``."""
    keys = [*_present(df, TARGET_KEYS), "attack_label", "reference"]
    work = df.assign(**{c: df[c].fillna("") for c in keys if df[c].dtype == object})
    present = {src: dst for src, dst in _MEANS.items() if src in work}
    work[list(present)] = work[list(present)].apply(pd.to_numeric, errors="coerce")  # None (not measured): NaN
    grouped = work.groupby(keys, sort=False, dropna=False)
    out = grouped[list(present)].mean().rename(columns=present)
    out["n"] = grouped.size()
    out["auc_sd"] = grouped["auc"].std(ddof=1).fillna(0.0)
    out["auc_min"], out["auc_max"] = grouped["auc"].min(), grouped["auc"].max()
    out = out.reset_index()
    order = out["target"].map(_TARGET_ORDER).fillna(3)
    return out.assign(_order=order).sort_values(["task", "_order"], kind="stable").drop(columns="_order")


def by_target(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per target: utility, memorization and its strongest attack (highest mean AUC; ties: higher
    TPR@1%FPR, then name) with that attack's spread and CI."""
    attacks = agg[~agg["reference"]]
    if attacks.empty:
        return attacks.assign(strongest=pd.Series(dtype=str))
    keys = _present(agg, TARGET_KEYS)
    ranked = attacks.sort_values(["auc", "tpr_at_1pct_fpr", "attack_label"], ascending=[False, False, True],
                                 kind="stable")
    best = ranked.groupby(keys, sort=False, dropna=False).head(1)
    order = agg[keys].drop_duplicates().reset_index(drop=True)
    return order.merge(best, on=keys, how="left").rename(columns={"attack_label": "strongest"})


def references(agg: pd.DataFrame) -> pd.DataFrame:
    """The reference baselines, once per task: they do not depend on the target model, so the first target's
    rows stand for all."""
    rows = agg[agg["reference"]]
    return rows.groupby(["task", "attack_label"], sort=False).head(1).reset_index(drop=True)


def per_attack(agg: pd.DataFrame, value: str = "auc") -> pd.DataFrame:
    """Attacks as rows (references last), targets as columns, ``value`` in the cells."""
    rows = agg.assign(column=agg["cell"] if agg["task"].nunique() == 1 else agg["task"] + " " + agg["cell"])
    table = rows.pivot_table(index=["reference", "attack_label"], columns="column", values=value, sort=False)
    # pairs measured by no record (e.g. a metric older records lack) stay, as NaN
    pairs = pd.MultiIndex.from_frame(rows[["reference", "attack_label"]].drop_duplicates())
    table = table.reindex(index=pairs, columns=list(dict.fromkeys(rows["column"])))
    return table.sort_index(level="reference", kind="stable").droplevel("reference")


def confounded(df: pd.DataFrame, chance: float = 0.5) -> list[str]:
    """A warning per task and reference baseline whose CI lies above chance in some replicate: its members and
    non-members differ in distribution, so every membership AUC of that task mixes leakage with that shift.
    One-sided, as ``analysis.shift.Shift.confounded`` explains: below chance is cross-validation's bias."""
    rows = df[df["reference"]].drop_duplicates(["task", "seed", "run_id", "attack_label"])
    flagged: dict[tuple[str, str], list[str]] = {}
    for _, r in rows.iterrows():
        lo, hi = r["auc_lo"], r["auc_hi"]
        if lo is not None and not math.isnan(lo) and lo > chance:
            found = f"{r['auc']:.3f} [{lo:.3f}, {hi:.3f}] (seed {r['seed']})"
            flagged.setdefault((r["task"], r["attack_label"]), []).append(found)
    return [
        f"{task}: the {attack} baseline, which sees no model, separates members from non-members: AUC "
        f"{'; '.join(found)}. The membership AUCs of this task are confounded by that distribution shift "
        "(docs/attacks.md, blind)."
        for (task, attack), found in flagged.items()
    ]


def compare(a: pd.DataFrame, b: pd.DataFrame, on: Sequence[str]) -> pd.DataFrame:
    """Aggregated rows of ``a`` and ``b`` matched on ``on``, side by side, with Δ = b − a for AUC and ROUGE-L.

    The CI of Δ is Δ ± sqrt(h_a² + h_b²), h = each side's CI half-width: the two sides are treated as independent,
    which is conservative when they share samples (a paired interval needs the per-sample scores,
    :mod:`kdbench.results.deltas`)."""
    pair = aggregate(a).merge(aggregate(b), on=list(on), suffixes=("_a", "_b"))
    for value in ("auc", "rouge_l"):
        delta = pair[f"{value}_b"] - pair[f"{value}_a"]
        half = (((pair[f"{value}_hi_a"] - pair[f"{value}_lo_a"]) / 2) ** 2
                + ((pair[f"{value}_hi_b"] - pair[f"{value}_lo_b"]) / 2) ** 2) ** 0.5
        pair[f"delta_{value}"], pair[f"delta_{value}_lo"], pair[f"delta_{value}_hi"] = delta, delta - half, delta + half
    return pair


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """[Z]-style: one row per target (teacher, baseline, each student), the mean AUC of each attack (references
    too, named ``<attack> (reference)``), ROUGE-L, memorization and PII leakage (where measured); ``n`` replicates
    and ``*_sd`` spreads."""
    agg = aggregate(df)
    agg = agg.assign(attack_label=[f"{a} (reference)" if r else a for a, r in zip(agg["attack_label"],
                                                                                  agg["reference"], strict=True)])
    keys = _present(agg, ("task", "cell"))
    auc = agg.pivot_table(index=keys, columns="attack_label", values="auc", sort=False)
    sd = agg.pivot_table(index=keys, columns="attack_label", values="auc_sd", sort=False)
    auc.columns = [f"AUC {c}" for c in auc.columns]
    sd.columns = [f"AUC {c} sd" for c in sd.columns]
    names = {"rouge_l": "ROUGE-L", "mem_members": "memorized members", "mem_nonmembers": "memorized non-members",
             "pii_members": "PII leaked members", "pii_nonmembers": "PII leaked non-members",
             "pii_members_k": "PII leaked members, best of k", "pii_nonmembers_k": "PII leaked non-members, best of k"}
    present = [c for c in names if c in agg and agg[c].notna().any()]
    target = agg.groupby(keys, sort=False)[[*present, "n"]].first().rename(columns=names)
    return auc.join(sd).join(target).reset_index()


def _present(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in df.columns]
