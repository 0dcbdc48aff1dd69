"""The paper table (:func:`kdbench.results.summary.paper_table`) in the formats a paper or another tool reads.

Machine formats (csv, json, parquet) keep the numbers, spreads in their own ``* sd`` columns; text formats
(markdown, latex) show ``mean ± sd`` where there are several replicates.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.core.errors import KdbenchError

FORMATS = ("csv", "parquet", "markdown", "latex", "json")


def render(table: pd.DataFrame, fmt: str) -> str:
    """``table`` as text in ``fmt`` (every format but parquet, which is binary: :func:`write`)."""
    if fmt not in FORMATS:
        raise KdbenchError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if fmt == "parquet":
        raise KdbenchError("parquet is a binary format: give --out FILE.parquet.")
    if fmt == "csv":
        return str(table.to_csv(index=False))
    if fmt == "json":
        return str(table.to_json(orient="records", indent=2)) + "\n"
    text = formatted(table)
    if fmt == "latex":
        return str(text.to_latex(index=False, escape=True)).replace("±", "$\\pm$")
    return markdown(text)


def write(table: pd.DataFrame, fmt: str, out: Path) -> Path:
    """Write ``table`` to ``out`` in ``fmt``."""
    if fmt == "parquet":
        try:
            table.to_parquet(out, index=False)
        except ImportError as exc:  # pandas reads and writes parquet through pyarrow (a dependency of datasets)
            raise KdbenchError(f"Writing parquet needs pyarrow ({exc}); pip install pyarrow.") from None
    else:
        out.write_text(render(table, fmt), encoding="utf-8")
    return out


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers as the strings a paper prints: AUC to 3 decimals (± sd over replicates), ROUGE-L to 1, rates to 2."""
    out = pd.DataFrame(index=table.index)
    several = table["n"] > 1 if "n" in table else pd.Series(False, index=table.index)
    for column in table.columns:
        if column.endswith(" sd") or column == "n":
            continue
        values = table[column]
        if column.startswith("AUC "):
            sd = table.get(f"{column} sd")
            out[column] = [_auc(v, s if many else None)
                           for v, s, many in zip(values, sd if sd is not None else [None] * len(values), several,
                                                 strict=True)]
        elif column == "ROUGE-L":
            out[column] = [_number(v, 1) for v in values]
        elif column.startswith(("memorized", "PII")):
            out[column] = [_number(v, 2) for v in values]
        else:
            out[column] = values.astype(str)
    if "n" in table:
        out["seeds"] = table["n"].astype(str)
    return out


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (text left-aligned, the rest right-aligned)."""
    header = [str(c) for c in table.columns]
    rows = [[str(v).replace("|", "\\|") for v in row] for row in table.itertuples(index=False)]
    left = [c in ("task", "cell") for c in table.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if is_left else "---:" for is_left in left) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _auc(value: float, sd: float | None) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:.3f}" if sd is None or pd.isna(sd) else f"{value:.3f} ± {sd:.3f}"


def _number(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"
