"""Results records: the data of record (DESIGN.md §5).

One JSON object per (task, distiller, defense, target, attack) in ``results.jsonl``. Teacher and no-KD baseline
records carry ``distiller = defense = None``: they do not depend on either. Validation is hand-written and strict
so that the leaderboard can refuse a bad contribution with the file and line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.errors import KdbenchError

SCHEMA_VERSION = 1
TARGETS = ("teacher", "baseline", "student")
PER_BLOCK_FILE = "per_block.json"  # written beside results.jsonl by `kdbench analyze blocks --run DIR`
PER_BLOCK_FIELD = "per_block_auc"  # provenance field: AUC per transformer block of the record's model


@dataclass
class ResultRecord:
    """One attack against one target model of one cell."""

    run_id: str
    task: str
    protocol: str  # "public" ([Z]: distil on the public split) or "private" ([C]/DistiLLM)
    distiller: str | None
    defense: str | None
    target: str
    attack: str
    auc: float
    auc_ci: list[float]
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    n_members: int
    n_nonmembers: int
    rouge_l: float
    seed: int
    model: str
    kdbench_version: str
    distiller_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    defense_report: dict[str, Any] = field(default_factory=dict)  # what the defenses measured (e.g. spent ε)
    attack_params: dict[str, Any] = field(default_factory=dict)
    tpr_at_5pct_fpr: float | None = None
    fpr_resolution: float | None = None
    balanced_accuracy: float | None = None
    member_tpr: float | None = None  # [C]: members flagged at its balanced-accuracy threshold (classes ≥ 20%)
    member_precision: float | None = None  # [C]: members among the flagged at that threshold
    rouge_l_ci: list[float] | None = None
    memorization: dict[str, float] | None = None
    teacher_rkl: dict[str, float] | None = None  # {"before", "after"}: reverse KL to the teacher (baseline, students)
    # the members' and non-members' secret PII values emitted verbatim by greedy decoding, and by the best of k
    # samples at temperature 1 (evaluation.pii)
    pii_leakage: dict[str, Any] | None = None
    roc: dict[str, list[float]] | None = None
    git_commit: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    # A reference baseline (``blind``): its AUC measures the samples (distribution shift), not the model, so it is
    # shown beside the attacks but never counted as one (strongest attack, risk).
    reference: bool = False
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to results.jsonl (``tpr_at_0.1pct_fpr`` spelled as DESIGN.md §5 names it)."""
        data = asdict(self)
        data["tpr_at_0.1pct_fpr"] = data.pop("tpr_at_01pct_fpr")
        return data


class ResultsFileError(KdbenchError):
    """A results file that does not validate; the message names the file and line."""


_REQUIRED: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "task": (str,),
    "target": (str,),
    "attack": (str,),
    "auc": (float, int),
    "auc_ci": (list,),
    "tpr_at_1pct_fpr": (float, int),
    "tpr_at_0.1pct_fpr": (float, int),
    "n_members": (int,),
    "n_nonmembers": (int,),
    "rouge_l": (float, int),
    "seed": (int,),
    "provenance": (dict,),  # split hashes, models, packages: what makes two records comparable
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "protocol": (str,),
    "distiller": (str, type(None)),
    "defense": (str, type(None)),
    "model": (str,),
    "kdbench_version": (str,),
    "distiller_params": (dict,),
    "defense_params": (dict,),
    "defense_report": (dict,),
    "attack_params": (dict,),
    "tpr_at_5pct_fpr": (float, int, type(None)),
    "fpr_resolution": (float, int, type(None)),
    "balanced_accuracy": (float, int, type(None)),
    "member_tpr": (float, int, type(None)),
    "member_precision": (float, int, type(None)),
    "rouge_l_ci": (list, type(None)),
    "memorization": (dict, type(None)),
    "teacher_rkl": (dict, type(None)),
    "pii_leakage": (dict, type(None)),
    "roc": (dict, type(None)),
    "git_commit": (str, type(None)),
    "reference": (bool,),
    "schema_version": (int,),
}
_UNIT_INTERVAL = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "tpr_at_5pct_fpr", "balanced_accuracy", "member_tpr",
                  "member_precision")


def validate_record(obj: Any) -> list[str]:
    """Every reason ``obj`` is not a valid results record (empty when it is). Values are checked only once every
    field has its type, so each value check may read its fields unguarded."""
    if not isinstance(obj, dict):
        return [f"a record must be a JSON object, got {type(obj).__name__}"]
    problems = list(_field_types(obj))
    if problems:
        return problems
    return [problem for check in _VALUE_CHECKS for problem in check(obj)]


def _field_types(obj: dict[str, Any]) -> Iterator[str]:
    """Missing required fields, then fields of the wrong type (a bool is never a number, though Python says so)."""
    for key, types in _REQUIRED.items():
        if key not in obj:
            yield f"missing field {key!r}"
        elif _wrong_type(obj[key], types):
            yield f"field {key!r} has type {type(obj[key]).__name__}"
    for key, types in _OPTIONAL.items():
        if key in obj and _wrong_type(obj[key], types):
            yield f"field {key!r} has type {type(obj[key]).__name__}"


def _wrong_type(value: Any, types: tuple[type, ...]) -> bool:
    if bool in types:
        return not isinstance(value, bool)
    return isinstance(value, bool) or not isinstance(value, types)


def _within(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and low <= value <= high


def _target(obj: dict[str, Any]) -> Iterator[str]:
    if obj["target"] not in TARGETS:
        yield f"field 'target' is {obj['target']!r}, expected one of {', '.join(TARGETS)}"


def _unit_intervals(obj: dict[str, Any]) -> Iterator[str]:
    """AUC, TPRs and balanced accuracy are rates (absent or None: not measured)."""
    for key in _UNIT_INTERVAL:
        value = obj.get(key)
        if value is not None and not _within(value, 0.0, 1.0):
            yield f"field {key!r} is {value!r}, outside [0, 1]"


def _auc_ci(obj: dict[str, Any]) -> Iterator[str]:
    ci = obj["auc_ci"]
    if len(ci) != 2 or not all(_within(v, 0.0, 1.0) for v in ci) or ci[0] > ci[1]:
        yield f"field 'auc_ci' is {ci!r}, expected [low, high] within [0, 1]"


def _rouge_l(obj: dict[str, Any]) -> Iterator[str]:
    """ROUGE-L is reported in percent."""
    if not _within(obj["rouge_l"], 0.0, 100.0):
        yield f"field 'rouge_l' is {obj['rouge_l']!r}, outside [0, 100]"


def _counts(obj: dict[str, Any]) -> Iterator[str]:
    for key in ("n_members", "n_nonmembers"):
        if obj[key] <= 0:
            yield f"field {key!r} is {obj[key]!r}, expected a positive count"


def _finite(obj: dict[str, Any]) -> Iterator[str]:
    """Python's json reads NaN and Infinity as floats; they would poison every mean on the leaderboard, print as
    "nan" on its pages, draw broken ROC curves, and make a published results.jsonl invalid JSON. Nested values
    (memorization, roc, CIs, parameters, reports) are checked too."""
    for key, value in obj.items():
        for where in _non_finite(value, key):
            yield f"field {where!r} is not a finite number"


def _non_finite(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, float) and not math.isfinite(value):
        yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{where}[{index}]")


def _teacher_rkl(obj: dict[str, Any]) -> Iterator[str]:
    """Reverse KLs to the teacher, when a record has them: finite and non-negative, before and after."""
    value = obj.get("teacher_rkl")
    if value is None:
        return
    numbers = all(isinstance(value.get(k), (int, float)) and not isinstance(value.get(k), bool)
                  for k in ("before", "after"))
    if set(value) != {"before", "after"} or not numbers or not all(
            math.isfinite(value[k]) and value[k] >= 0 for k in ("before", "after")):
        yield "field 'teacher_rkl' must be {\"before\": KL, \"after\": KL}, finite and non-negative"


_PII_RATES = ("members", "nonmembers")
_PII_COUNTS = ("member_values", "nonmember_values")
_PII_BEST_OF_K = ("k", "members_best_of_k", "nonmembers_best_of_k")


def _pii_leakage(obj: dict[str, Any]) -> Iterator[str]:
    """PII leakage, when a record has it: rates within [0, 1] (or null: no secret values) and value counts; with
    best-of-k sampling, k ≥ 1 and its two rates too."""
    value = obj.get("pii_leakage")
    if value is None:
        return
    sampled = "k" in value
    rates = (*_PII_RATES, *_PII_BEST_OF_K[1:]) if sampled else _PII_RATES
    rates_ok = all(value.get(k) is None or (not _wrong_type(value[k], (int, float)) and _within(value[k], 0.0, 1.0))
                   for k in rates)
    counts_ok = all(not _wrong_type(value.get(k), (int,)) and value[k] >= 0 for k in _PII_COUNTS)
    k_ok = not sampled or (not _wrong_type(value["k"], (int,)) and value["k"] >= 1)
    keys = {*_PII_RATES, *_PII_COUNTS, *(_PII_BEST_OF_K if sampled else ())}
    if set(value) != keys or not rates_ok or not counts_ok or not k_ok:
        yield ("field 'pii_leakage' must be {\"members\": rate, \"nonmembers\": rate, \"member_values\": n, "
               "\"nonmember_values\": n} (with best-of-k sampling also \"k\": n >= 1, \"members_best_of_k\": "
               "rate, \"nonmembers_best_of_k\": rate), rates within [0, 1] or null")


def _per_block(obj: dict[str, Any]) -> Iterator[str]:
    """The per-block AUCs ``kdbench analyze blocks`` attached, when there are any."""
    blocks = (obj.get("provenance") or {}).get(PER_BLOCK_FIELD)
    if blocks is not None and not _unit_list(blocks):
        yield f"field 'provenance.{PER_BLOCK_FIELD}' must be a non-empty list of AUCs within [0, 1]"


# In this order: a record's problems are listed as they always were.
_VALUE_CHECKS: tuple[Callable[[dict[str, Any]], Iterator[str]], ...] = (
    _target, _unit_intervals, _auc_ci, _rouge_l, _counts, _finite, _per_block, _teacher_rkl, _pii_leakage,
)


def _unit_list(values: Any) -> bool:
    """A non-empty list of AUCs (not bools)."""
    return isinstance(values, list) and bool(values) and all(
        not isinstance(v, bool) and _within(v, 0.0, 1.0) for v in values)


def results_files(paths: Iterable[Path]) -> list[Path]:
    """Expand results directories to their ``results.jsonl``; keep files as given."""
    files = []
    for path in paths:
        if path.is_dir():
            candidate = path / "results.jsonl"
            if not candidate.exists():
                raise ResultsFileError(f"{path}: no results.jsonl in this directory; pass a run directory or a file.")
            files.append(candidate)
        elif path.exists():
            files.append(path)
        else:
            raise ResultsFileError(f"{path}: no such file or directory.")
    return files


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the validated records of one JSONL file; raise naming file and line on the first bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFileError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); a results file is "
                               "JSON Lines in UTF-8.") from None
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot read the results file ({exc.strerror or exc}).") from None
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == 1 and _one_document(text):
                raise ResultsFileError(
                    f"{path}: one JSON document, not a results file (JSON Lines, one record per line); pass "
                    "a run directory or its results.jsonl."
                ) from None
            raise ResultsFileError(f"{path}:{lineno}: not valid JSON ({exc.msg}).") from None
        if isinstance(obj, dict) and not set(_REQUIRED) & set(obj):
            keys = ", ".join(sorted(obj)[:5]) or "none"
            raise ResultsFileError(f"{path}:{lineno}: not a results record (keys: {keys}); pass a run "
                                   "directory or its results.jsonl, not another file of the run.")
        problems = validate_record(obj)
        if problems:
            raise ResultsFileError(f"{path}:{lineno}: invalid results record: " + "; ".join(problems) + ".")
        yield obj


def _one_document(text: str) -> bool:
    """Whether ``text`` is a single (multi-line) JSON document, such as run.json."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def load_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """All records of the given results files or run directories, validated, with the analyses found beside
    each file attached (:func:`attach_per_block`)."""
    records = []
    for path in results_files(paths):
        found = list(iter_records(path))
        attach_per_block(found, path.parent / PER_BLOCK_FILE)
        records += found
    return records


def attach_per_block(records: list[dict[str, Any]], path: Path) -> int:
    """Copy each model's per-block AUCs from ``path`` (a per_block.json) into ``provenance.per_block_auc`` of
    the records of that model (matched by ``provenance.model_key``), so they travel with the records into a
    published results file and onto the leaderboard. Returns how many records got them."""
    if not path.exists():
        return 0
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        targets = data["targets"]
        by_key = {t["model_key"]: t[PER_BLOCK_FIELD] for t in targets}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsFileError(
            f"{path}: not a per-block report of `kdbench analyze blocks` ({type(exc).__name__}: {exc}); "
            "rerun the analysis or move the file away."
        ) from None
    for key, values in by_key.items():
        if not _unit_list(values):
            raise ResultsFileError(f"{path}: the per-block AUCs of model {key} are not AUCs within [0, 1].")
    attached = 0
    for record in records:
        values = by_key.get(record.setdefault("provenance", {}).get("model_key"))
        if values is not None:
            record["provenance"][PER_BLOCK_FIELD] = list(values)
            attached += 1
    return attached
