"""Results as a pandas DataFrame: the one table every summary, comparison and export is computed from.

:func:`load` reads run directories, results files or glob patterns through the validating reader
(:func:`kdbench.results.records.load_records`), so a bad line is refused with its file and line, and
:func:`frame` turns records already in memory (a finished run's) into the same table. One row per record; nested
fields are flattened with dotted names (``distiller_params.temperature``, ``memorization.members``), CIs are split
into ``*_lo``/``*_hi`` columns, and each plugin gets a readable label (``kd``, or ``kd:temperature=4`` where the
loaded records hold several parameter settings of it).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.results.records import ResultsFileError, load_records

KEY_COLUMNS = ("task", "protocol", "target", "cell", "distiller", "defense", "attack", "seed", "run_id")
_PLUGINS = (("distiller", "distiller_params"), ("defense", "defense_params"), ("attack", "attack_params"))
_GLOB_CHARS = frozenset("*?[")


def load(*paths: str | Path) -> pd.DataFrame:
    """Every record of the given run directories, results files or glob patterns, one row each, validated."""
    if not paths:
        raise ResultsFileError("No results given: pass run directories, results.jsonl files or glob patterns.")
    return frame(load_records(expand(paths)))


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Paths as given, glob patterns expanded (sorted); a pattern that matches nothing is an error naming it."""
    out: list[Path] = []
    for path in paths:
        text = str(path)
        if _GLOB_CHARS & set(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ResultsFileError(f"{text}: the pattern matches no file or directory.")
            out += [Path(m) for m in matches]
        else:
            out.append(Path(text))
    return out


def frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (JSON objects as results.jsonl holds them) as a flat DataFrame with key columns first."""
    rows = [dict(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=[*KEY_COLUMNS, "auc", "auc_lo", "auc_hi", "rouge_l", "reference"])
    df = pd.json_normalize(rows, sep=".", max_level=None)
    for name in ("auc", "rouge_l"):
        ci = [_pair(v) for v in df.get(f"{name}_ci", pd.Series([None] * len(df)))]
        df[f"{name}_lo"], df[f"{name}_hi"] = [c[0] for c in ci], [c[1] for c in ci]
    df["reference"] = df["reference"].fillna(False).astype(bool) if "reference" in df else False
    for column in ("protocol", "distiller", "defense"):
        if column not in df:
            df[column] = None
    for name, params in _PLUGINS:
        df[f"{name}_label"] = _labels(rows, name, params)
    df["cell"] = [_cell(r, d, e) for r, d, e in zip(rows, df["distiller_label"], df["defense_label"], strict=True)]
    first = [c for c in (*KEY_COLUMNS, "attack_label", "distiller_label", "defense_label") if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def _pair(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, list) and len(value) == 2:
        return float(value[0]), float(value[1])
    return None, None


def _labels(rows: list[dict[str, Any]], name_key: str, params_key: str) -> list[str | None]:
    """``name``, or ``name:k=v,...`` with the parameters that differ between the rows of that name."""
    settings: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(name_key) is not None:
            settings.setdefault(row[name_key], []).append(_flat(row.get(params_key) or {}))
    varying = {
        name: sorted({k for p in params for k in p if len({_canonical(q.get(k)) for q in params}) > 1})
        for name, params in settings.items()
    }
    out: list[str | None] = []
    for row in rows:
        name = row.get(name_key)
        keys = varying.get(name, []) if name is not None else []
        params = _flat(row.get(params_key) or {})
        out.append(name if not keys else f"{name}:" + ",".join(f"{k}={_short(params.get(k))}" for k in keys))
    return out


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameters (a defense stack's, by defense) as one level of dotted keys."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _cell(row: Mapping[str, Any], distiller: str | None, defense: str | None) -> str:
    """What a row measured, readably: ``teacher``, ``baseline``, or the student's distiller [and defense]."""
    if row["target"] != "student":
        return str(row["target"])
    label = distiller or "student"
    return label if defense in (None, "", "none") else f"{label} [{defense}]"
