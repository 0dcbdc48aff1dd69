"""Test helpers: results records, and fake installed distributions (real entry points, found by importlib.metadata)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from kdbench.results.records import ResultRecord, validate_record


def make_record(
    distiller: str | None = "kd",
    defense: str | None = "none",
    *,
    target: str = "student",
    attack: str = "loss",
    auc: float = 0.6,
    rouge: float = 20.0,
    seed: int = 0,
    **fields: Any,
) -> dict[str, Any]:
    """One valid results record, written the way `kdbench run` writes them; keywords override any field.

    The numbers are fixed test values (CI ±0.05 around ``auc``, clamped to [0, 1]; ±1 around ``rouge``), and
    the record carries a ROC curve, memorization statistics and provenance with a per-block AUC. Pass
    ``rouge_l_ci=None`` (or ``roc=None`` ...) for a record without them. Keywords that are not
    ResultRecord fields (``examples``, ``some_new_metric`` ...) are added to the JSON object as they are.
    """
    values: dict[str, Any] = dict(
        run_id=f"run-{seed}",
        task="synthetic-pii",
        protocol="public",
        distiller=distiller,
        defense=defense,
        target=target,
        attack=attack,
        auc=auc,
        auc_ci=[max(0.0, auc - 0.05), min(1.0, auc + 0.05)],
        tpr_at_1pct_fpr=0.02,
        tpr_at_01pct_fpr=0.004,
        n_members=64,
        n_nonmembers=64,
        rouge_l=rouge,
        rouge_l_ci=[rouge - 1, rouge + 1],
        seed=seed,
        model="builtin:tiny",
        kdbench_version="test",
        roc={"fpr": [0.0, 0.1, 0.5, 1.0], "tpr": [0.0, 0.2, 0.7, 1.0]},
        memorization={"members": 0.1, "nonmembers": 0.02, "gap": 0.08},
        provenance={
            "split_hashes": {"private": "abc"},
            "packages": {"torch": "2"},
            "per_block_auc": [0.5, 0.6],
        },
    )
    extra = {k: fields.pop(k) for k in list(fields) if k not in ResultRecord.__dataclass_fields__}
    values.update(fields)
    data = {**ResultRecord(**values).to_json(), **extra}
    assert validate_record(data) == [], validate_record(data)
    return data


def make_distribution(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]) -> Path:
    """Write ``module.py`` and a ``<dist>-1.0.dist-info`` with ``kdbench`` entry points under ``root``.

    Putting ``root`` on sys.path (or PYTHONPATH) makes it an installed distribution as far as
    importlib.metadata and kdbench's loader can tell.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kdbench]\n{lines}\n")
    return root
