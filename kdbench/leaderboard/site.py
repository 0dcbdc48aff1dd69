"""Render the static leaderboard (DESIGN.md §6) from results files alone.

The site is self-contained: CSS, JS and every chart (inline SVG whose geometry is computed here) live inside
each page, a Content-Security-Policy forbids fetching anything, and it works from file://. Plugin names,
parameters and provenance are third-party text, so every page goes through jinja2 with autoescape. Member text
(record fields ``examples``/``samples``) is removed at load time unless explicitly asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import jinja2
from markupsafe import Markup

from kdbench.core.cache import write_dir_atomically
from kdbench.core.errors import KdbenchError, OutputError
from kdbench.core.version import __version__
from kdbench.leaderboard.completion import Gap, gaps
from kdbench.leaderboard.ranking import (
    DEFAULT_METRIC,
    DEFAULT_UTILITY_FLOOR,
    RISK_METRICS,
    AttackSummary,
    Board,
    Cell,
    CellKey,
    DefenseCost,
    Estimate,
    MergeResult,
    RankedEntry,
    Record,
    attack_key,
    build_boards,
    by_seed,
    canonical,
    defense_costs,
    estimate,
    merge_records,
    protocol_of,
)
from kdbench.leaderboard.replicates import SharedSeed, check_replicates
from kdbench.results.records import PER_BLOCK_FIELD, ResultRecord, load_records, results_files
from kdbench.tasks.manifest import load_task
from kdbench.tasks.sources import attribution

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:
    from importlib.abc import Traversable

MEMBER_TEXT_FIELDS = frozenset({"examples", "samples"})
SITE_MARKER = ".kdbench-leaderboard"
RESERVED_NAMES = frozenset({"index.html", "results.jsonl", "entries"})  # names the site itself uses
KNOWN_FIELDS = frozenset({f.name for f in dataclasses.fields(ResultRecord)} | {"tpr_at_0.1pct_fpr"})
MAX_ROC_POINTS = 200


# ------------------------------------------------------------------------------------------------ loading


def strip_member_text(value: Any) -> tuple[Any, int]:
    """``value`` without any ``examples``/``samples`` key at any depth, and how many were removed.

    Containers without such keys are returned as they are (records carry long numeric lists such as ROC
    curves; copying them would dominate the build time).
    """
    if isinstance(value, dict):
        removed = sum(1 for k in value if k in MEMBER_TEXT_FIELDS)
        kept = {}
        for key, item in value.items():
            if key not in MEMBER_TEXT_FIELDS:
                kept[key], count = strip_member_text(item)
                removed += count
        return (kept, removed) if removed else (value, 0)
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        pairs = [strip_member_text(item) for item in value]
        removed = sum(p[1] for p in pairs)
        return ([p[0] for p in pairs], removed) if removed else (value, 0)
    return value, 0


def prepare_records(records: Iterable[Record], include_member_text: bool) -> tuple[list[Record], int]:
    """Records with member text removed (unless asked to keep it) and the number of fields removed."""
    if include_member_text:
        return list(records), 0
    prepared, omitted = [], 0
    for record in records:
        clean, count = strip_member_text(record)
        prepared.append(clean)
        omitted += count
    return prepared, omitted


@dataclass
class BuildReport:
    """What a build did, for the CLI to print."""

    out: Path
    files: int
    records_read: int
    merge: MergeResult
    member_text_omitted: int
    boards: int = 0
    entries: int = 0
    pages: int = 0
    shared_seeds: list[SharedSeed] = field(default_factory=list)  # seeds found in several (agreeing) runs
    gaps: list[Gap] = field(default_factory=list)  # attacks some entries lack, with what to run
    unusable: int = 0  # entries below the utility floor


def build_site(
    paths: Sequence[Path],
    out: Path,
    *,
    include_member_text: bool = False,
    metric: str = DEFAULT_METRIC,
    floor: float = DEFAULT_UTILITY_FLOOR,
) -> BuildReport:
    """Validate and merge the results files, check replicates, then write the site to ``out`` (replacing a
    previous build). ``metric`` is the risk metric the pages rank by first; ``floor`` the utility floor as a
    fraction of the no-KD baseline's ROUGE-L."""
    files = results_files(paths)
    raw = load_records(files)
    if not raw:
        raise KdbenchError(f"No results records in {', '.join(map(str, files))}; nothing to build.")
    records, omitted = prepare_records(raw, include_member_text)
    merge = merge_records(records)
    report = BuildReport(out, len(files), len(raw), merge, omitted)
    report.shared_seeds = check_replicates(merge.records)
    boards = build_boards([r for r in merge.records if not r.get("reference")], metric, floor)  # blind: no attack
    report.boards, report.entries = len(boards), sum(len(b.entries) for b in boards)
    report.unusable = sum(1 for b in boards for e in b.entries if not e.usable)
    report.gaps = gaps(boards, {k: v for b in boards for k, v in attack_labels(b.students).items()})
    report.pages = _write_atomically(
        out, lambda tmp: render_site(boards, merge.records, tmp, include_member_text)
    )
    return report


def _write_atomically(out: Path, render: Callable[[Path], int]) -> int:
    """Render into a sibling temp dir, then swap it in, so a failed build never leaves half a site."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SITE_MARKER).exists())):
        raise OutputError(f"{out} exists and is not a kdbench leaderboard site; pass an empty or new --out.")

    def marked(tmp: Path) -> int:
        pages = render(tmp)
        (tmp / SITE_MARKER).write_text("generated by kdbench leaderboard build\n", encoding="utf-8")
        return pages

    return write_dir_atomically(out, marked)


# ------------------------------------------------------------------------------------------------ templates


def resource_root() -> Traversable:
    """The installed ``kdbench_leaderboard`` package, or ``<repo>/leaderboard`` when running from source."""
    try:
        root = importlib.resources.files("kdbench_leaderboard")
        if (root / "templates").is_dir():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[1] / "leaderboard"


def environment(root: Traversable | None = None) -> jinja2.Environment:
    """The jinja2 environment: templates from the package, autoescape on for everything, strict undefined."""
    templates = (root or resource_root()) / "templates"

    def load(name: str) -> str | None:
        path = templates.joinpath(*name.split("/"))
        return path.read_text(encoding="utf-8") if path.is_file() else None

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=jinja2.select_autoescape(
            ("html", "htm", "xml", "svg"), default_for_string=True, default=True
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_number, signed=fmt_signed, ci=fmt_ci, params=compact_params)
    env.globals.update(heat_color=heat_color)
    return env


def static_text(name: str, root: Traversable | None = None) -> Markup:
    """Our own CSS/JS, inlined verbatim (not escaped) into each page so the site needs no other file."""
    text = ((root or resource_root()) / "static" / name).read_text(encoding="utf-8")
    if "</" in text:
        raise KdbenchError(f"static/{name} must not contain '</' (it is inlined into <style>/<script>).")
    return Markup(text)


# ------------------------------------------------------------------------------------------------ formatting


def fmt_number(value: Any, digits: int = 3) -> str:
    """A number with fixed decimals; '—' for missing values."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"{value:.{digits}f}"


def fmt_signed(value: float, digits: int = 3) -> str:
    """A difference with its sign always shown ('+0.012', '−1.50'; a true minus sign, as in print)."""
    text = f"{value:+.{digits}f}"
    return "\u2212" + text[1:] if text.startswith("-") else text


def fmt_ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    """'[low, high]' or '' when there is no CI."""
    return "" if not ci else f"[{fmt_number(ci[0], digits)}, {fmt_number(ci[1], digits)}]"


def compact_params(params: Any, limit: int = 120) -> str:
    """'k=v, k=v' for a parameter dict (nested values as JSON), shortened to ``limit`` characters."""
    if not isinstance(params, dict) or not params:
        return ""
    text = ", ".join(f"{k}={v if isinstance(v, str) else canonical(v)}" for k, v in sorted(params.items()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slug(text: str) -> str:
    """A safe file-name part; names that had to change get a hash suffix so distinct names never collide."""
    safe = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")[:60] or "x"
    return safe if safe == text and safe not in RESERVED_NAMES else f"{safe}-{_short_hash(text)}"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def entry_file(key: CellKey) -> str:
    """The detail page of a cell, relative to its task directory."""
    name = f"{key.protocol}--{key.distiller or '-'}--{key.defense or 'none'}"
    safe = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")[:80]
    return f"entries/{safe}-{_short_hash(repr(dataclasses.astuple(key)))}.html"


def heat_color(auc: float | None) -> tuple[str, str]:
    """(background, ink) for an AUC: white at chance (0.5), red toward 1, blue toward 0."""
    if auc is None:
        return "#f2f2f2", "#555555"
    t = max(-1.0, min(1.0, (auc - 0.5) / 0.5))
    target = (178, 24, 43) if t >= 0 else (33, 102, 172)
    rgb = [round(255 + (c - 255) * abs(t)) for c in target]
    return "#{:02x}{:02x}{:02x}".format(*rgb), "#ffffff" if abs(t) > 0.55 else "#1a1a1a"


# ------------------------------------------------------------------------------------------------ charts


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Line:
    points: str
    css: str
    title: str = ""


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    shape: str  # circle | square | triangle
    css: str
    title: str
    href: str | None = None
    whiskers: tuple[tuple[float, float, float, float], ...] = ()
    label: str = ""

    @property
    def triangle(self) -> str:
        """The three corners of a triangle marker centred on (x, y)."""
        corners = ((self.x, self.y - 6), (self.x - 6, self.y + 5), (self.x + 6, self.y + 5))
        return " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in corners)


@dataclass
class Chart:
    """Everything an SVG chart needs, in pixels; the template only draws it."""

    title: str
    x_label: str
    y_label: str
    width: int = 640
    height: int = 400
    box: tuple[float, float, float, float] = (60.0, 16.0, 624.0, 352.0)  # x0, y0, x1, y1
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    guides: list[Line] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    legend: list[tuple[str, str, str]] = field(default_factory=list)  # (css, shape, text)


@dataclass(frozen=True)
class Scale:
    """A linear map from a data domain to a pixel range."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float

    def __call__(self, value: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return self.px_lo + (value - self.lo) / span * (self.px_hi - self.px_lo)

    def ticks(self, digits: int) -> list[Tick]:
        """Evenly spaced round values inside the domain."""
        step = nice_step(self.hi - self.lo)
        first, last = math.ceil(self.lo / step - 1e-9), math.floor(self.hi / step + 1e-9)
        return [Tick(self(k * step), f"{k * step:.{digits}f}") for k in range(first, last + 1)]


def nice_step(span: float, max_ticks: int = 6) -> float:
    """The smallest 1/2/2.5/5 × 10^k step that gives at most ``max_ticks`` ticks over ``span``."""
    for exponent in range(-4, 4):
        for mantissa in (1.0, 2.0, 2.5, 5.0):
            step = mantissa * 10.0**exponent
            if span / step <= max_ticks:
                return step
    return 10.0**4


def padded_domain(values: Iterable[float], lo: float, hi: float, min_span: float) -> tuple[float, float]:
    """The data range padded by 8% (and to at least ``min_span``), clamped to [lo, hi]."""
    values = list(values) or [lo, hi]
    low, high = min(values), max(values)
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    pad = (high - low) * 0.08
    return max(lo, low - pad), min(hi, high + pad)


def _axes(chart: Chart, x: Scale, y: Scale, x_digits: int, y_digits: int) -> Chart:
    chart.x_ticks, chart.y_ticks = x.ticks(x_digits), y.ticks(y_digits)
    return chart


def _risk_text(attack: AttackSummary, metric: str) -> str:
    """'AUC 0.713 [0.68, 0.75] (mink++), TPR@1%FPR 0.120' with the ranking metric first."""
    auc = f"AUC {attack.auc.value:.3f} {fmt_ci(attack.auc.ci)}".rstrip()
    tpr = f"TPR@1%FPR {attack.tpr.value:.3f}"
    first, second = (auc, tpr) if metric == "auc" else (tpr, auc)
    return f"{first} ({attack.attack}), {second}"


def _cell_title(cell: Cell, attack: AttackSummary, metric: str, extra: str = "") -> str:
    spread = f" (seeds {fmt_ci(attack.auc.spread)})" if attack.auc.n > 1 else ""
    return (
        f"{cell.key.name}{extra}\nROUGE-L {cell.utility.value:.2f} {fmt_ci(cell.utility.ci, 2)}\n"
        f"risk {_risk_text(attack, metric)}{spread}\nreplicates (seeds): {len(cell.replicates)}"
    )


def _risk_interval(attack: AttackSummary, metric: str) -> tuple[float, tuple[float, float] | None]:
    """The risk and its whisker: the AUC's CI, or TPR@1%FPR's spread over seeds (it has no CI)."""
    if metric == "auc":
        return attack.auc.value, attack.auc.ci
    return attack.tpr.value, attack.tpr.spread if attack.tpr.n > 1 else None


def _marker(
    cell: Cell, attack: AttackSummary, metric: str, x: Scale, y: Scale, style: tuple[str, str], title: str,
    href: str | None,
) -> Marker:
    """A point at (risk, utility) with whiskers: the risk's CI (AUC) or seed spread (TPR), the utility's CI."""
    risk, interval = _risk_interval(attack, metric)
    util = cell.utility
    px, py = x(risk), y(util.value)
    whiskers = []
    if interval:
        whiskers.append((x(interval[0]), py, x(interval[1]), py))
    if util.ci:
        whiskers.append((px, y(util.ci[0]), px, y(util.ci[1])))
    return Marker(px, py, style[0], style[1], title, href, tuple(whiskers))


REFERENCE_STYLE = {"teacher": ("square", "pt ref teacher"), "baseline": ("triangle", "pt ref baseline")}
SFT_STYLE = ("triangle", "pt ref sft")


def frontier_chart(board: Board, entries: Sequence[RankedEntry], metric: str, hrefs: dict[CellKey, str]) -> Chart:
    """Risk (strongest common attack) against utility (ROUGE-L): entries, whiskers, frontier, floor, references."""
    label = RISK_METRICS[metric]
    chart = Chart(
        f"Privacy-utility frontier by {label}: {board.task} ({board.protocol})",
        f"risk: strongest common attack's {label} against the student (lower is better)",
        "utility: ROUGE-L",
    )
    points = [(e.cell, e.attack) for e in entries] + [(r, board.reference_attack(r, metric)) for r in board.references]
    risks = [_risk_interval(a, metric) for _, a in points]
    x_values = [v for risk, interval in risks for v in (risk, *(interval or ()))]
    y_values = [v for c, _ in points for v in (c.utility.value, *(c.utility.ci or ()))]
    threshold = board.floor.threshold
    if threshold is not None:
        y_values.append(threshold)
    x = Scale(*padded_domain(x_values, 0.0, 1.0, 0.1), chart.box[0], chart.box[2])
    y = Scale(*padded_domain(y_values, 0.0, 100.0, 5.0), chart.box[3], chart.box[1])
    if threshold is not None:
        floor_line = f"{chart.box[0]:.1f},{y(threshold):.1f} {chart.box[2]:.1f},{y(threshold):.1f}"
        chart.guides.append(Line(floor_line, "guide floor", f"utility floor: ROUGE-L {threshold:.2f}"))
    frontier = sorted((e for e in entries if e.on_frontier), key=lambda e: e.risk)
    if len(frontier) > 1:
        line = " ".join(f"{x(e.risk):.1f},{y(e.cell.utility.value):.1f}" for e in frontier)
        chart.lines.append(Line(line, "frontier-line", "Pareto frontier (layer 1)"))
    for entry in reversed(entries):  # frontier drawn last, on top
        css = "pt frontier" if entry.on_frontier else ("pt dominated" if entry.usable else "pt unusable")
        status = f"layer {entry.layer}" if entry.usable else "unusable at this setting"
        title = _cell_title(entry.cell, entry.attack, metric, f" — rank {entry.rank}, {status}")
        chart.markers.append(
            _marker(entry.cell, entry.attack, metric, x, y, ("circle", css), title, hrefs.get(entry.cell.key))
        )
    for ref in board.references:
        style = REFERENCE_STYLE.get(ref.key.target, SFT_STYLE)
        attack = board.reference_attack(ref, metric)
        title = _cell_title(ref, attack, metric, " — reference, not ranked")
        chart.markers.append(_marker(ref, attack, metric, x, y, style, title, None))
    chart.legend = [
        ("pt frontier", "circle", "frontier (layer 1)"),
        ("pt dominated", "circle", "dominated"),
        ("pt unusable", "circle", "unusable (below the utility floor)"),
        ("pt ref teacher", "square", "teacher"),
        ("pt ref baseline", "triangle", "no-KD baseline"),
        ("pt ref sft", "triangle", "sft distiller (baseline recipe)"),
    ]
    return _axes(chart, x, y, 2, 1 if y.hi - y.lo < 20 else 0)


def _downsample(values: Sequence[float], keep: Sequence[int]) -> list[float]:
    return [float(values[i]) for i in keep]


def roc_chart(summary: AttackSummary, label: str) -> Chart | None:
    """ROC curves of one attack, one line per seed, from the records' ``roc`` field when present."""
    chart = Chart(
        f"ROC: {label}",
        "false positive rate",
        "true positive rate",
        width=320,
        height=300,
        box=(48.0, 12.0, 308.0, 252.0),
    )
    x, y = Scale(0.0, 1.0, chart.box[0], chart.box[2]), Scale(0.0, 1.0, chart.box[3], chart.box[1])
    chart.guides.append(Line(f"{x(0):.1f},{y(0):.1f} {x(1):.1f},{y(1):.1f}", "guide", "chance"))
    for record in (group[0] for group in by_seed(summary.records).values()):
        roc = record.get("roc") or {}
        fpr, tpr = roc.get("fpr"), roc.get("tpr")
        if not (isinstance(fpr, list) and isinstance(tpr, list) and len(fpr) == len(tpr) >= 2):
            continue
        n = len(fpr)
        keep = (
            sorted({round(i * (n - 1) / (MAX_ROC_POINTS - 1)) for i in range(MAX_ROC_POINTS)})
            if n > MAX_ROC_POINTS
            else range(n)
        )
        pairs = zip(_downsample(fpr, keep), _downsample(tpr, keep), strict=True)
        # Both domains are [0, 1]: scale inline, this loop dominates large builds.
        (x0, dx), (y0, dy) = (x.px_lo, x.px_hi - x.px_lo), (y.px_lo, y.px_hi - y.px_lo)
        points = " ".join([f"{x0 + a * dx:.1f},{y0 + b * dy:.1f}" for a, b in pairs])
        title = f"{label}: seed {record['seed']} (run {record['run_id']}), AUC {record['auc']:.3f}"
        chart.lines.append(Line(points, "roc-line", title))
    return _axes(chart, x, y, 1, 1) if chart.lines else None


def per_block_chart(values: Sequence[float]) -> Chart:
    """Per-block AUC as bars that grow from chance (0.5), so blocks that leak stand out."""
    chart = Chart(
        "Per-block privacy risk",
        "transformer block",
        "AUC",
        width=640,
        height=260,
        box=(48.0, 12.0, 624.0, 220.0),
    )
    y = Scale(*padded_domain([*values, 0.5], 0.0, 1.0, 0.1), chart.box[3], chart.box[1])
    band = (chart.box[2] - chart.box[0]) / max(len(values), 1)
    for index, value in enumerate(values):
        top, base = y(value), y(0.5)
        chart.bars.append(
            Bar(
                chart.box[0] + index * band + band * 0.15,
                min(top, base),
                band * 0.7,
                max(abs(base - top), 1.0),
                "bar",
                f"block {index}: AUC {value:.3f}",
            )
        )
    step = max(1, len(values) // 12)
    chart.x_ticks = [Tick(chart.box[0] + (i + 0.5) * band, str(i)) for i in range(0, len(values), step)]
    chart.y_ticks = y.ticks(2)
    chart.guides.append(
        Line(f"{chart.box[0]:.1f},{y(0.5):.1f} {chart.box[2]:.1f},{y(0.5):.1f}", "guide", "chance")
    )
    return chart


# ------------------------------------------------------------------------------------------------ views


def attack_labels(cells: Iterable[Cell]) -> dict[str, str]:
    """Attack key -> label; parameters are shown only when one attack name has several settings."""
    variants: dict[str, set[str]] = defaultdict(set)
    params: dict[str, dict[str, Any]] = {}
    for cell in cells:
        for attack in cell.attacks:
            variants[attack.attack].add(attack.key)
            params[attack.key] = attack.params
    labels = {}
    for name, keys in variants.items():
        for key in keys:
            labels[key] = (
                name if len(keys) == 1 else f"{name} ({compact_params(params[key], 60) or 'defaults'})"
            )
    return labels


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else canonical(value)
    return flat


def variant_labels(cells: Sequence[Cell]) -> dict[CellKey, str]:
    """For entries that share a name, the configuration values that tell them apart."""
    by_name: dict[str, list[CellKey]] = defaultdict(list)
    for cell in cells:
        by_name[cell.key.name].append(cell.key)
    labels: dict[CellKey, str] = {}
    for keys in by_name.values():
        flats = {key: _flatten(key.config_dict()) for key in keys}
        names = sorted({n for flat in flats.values() for n in flat})
        differing = [n for n in names if len({flat.get(n) for flat in flats.values()}) > 1]
        for key, flat in flats.items():
            labels[key] = ", ".join(f"{_short(n, key)}={flat.get(n, '—')}" for n in differing)
    return labels


def _short(name: str, key: CellKey) -> str:
    """A parameter's name without the prefix the entry's own defense already says (``epsilon``, not
    ``defense_params.dp-sgd.epsilon``)."""
    return name.removeprefix(f"defense_params.{key.defense}.") if key.defense else name


@dataclass
class HeatRow:
    label: str
    href: str | None
    reference: bool
    values: list[float | None]
    note: str = ""  # "unusable", "not ranked" ...


@dataclass
class HeatMap:
    """Student AUC per entry (rows) and attack (columns, every attack), references first."""

    columns: list[str]
    common: list[bool]  # per column: in the board's common attack set (the ranking uses only these)
    rows: list[HeatRow]


def heat_map(
    board: Board, labels: dict[str, str], variants: dict[CellKey, str], hrefs: dict[CellKey, str]
) -> HeatMap:
    """The attack × distiller/defense heat map of AUC (like [Z]'s figures), rows in rank order."""
    keys = sorted(labels, key=lambda k: labels[k])
    rows = []
    for cell in board.references:
        auc = {a.key: a.auc.value for a in cell.attacks}
        rows.append(HeatRow(cell.key.name, None, True, [auc.get(k) for k in keys], "reference"))
    students = [(e.cell, "" if e.usable else "unusable") for e in board.entries]
    students += [(cell, "not ranked") for cell in board.unranked]
    for cell, note in students:
        auc = {a.key: a.auc.value for a in cell.attacks}
        name = cell.key.name + (f" [{variants[cell.key]}]" if variants.get(cell.key) else "")
        rows.append(HeatRow(name, hrefs[cell.key], False, [auc.get(k) for k in keys], note))
    return HeatMap([labels[k] for k in keys], [k in board.common for k in keys], rows)


@dataclass
class RankingView:
    """One ranking of a board (by AUC or by TPR@1%FPR): its entries and frontier chart."""

    metric: str
    label: str
    entries: list[RankedEntry]
    chart: Chart
    shown: bool  # the build's --rank-by: visible without the page's switch
    costs: dict[CellKey, DefenseCost] = field(default_factory=dict)  # defended entries vs undefended


@dataclass
class BoardView:
    """A board plus what its task-page section needs."""

    board: Board
    anchor: str
    rankings: list[RankingView]
    heat: HeatMap
    variants: dict[CellKey, str]
    hrefs: dict[CellKey, str]
    attack_labels: dict[str, str]
    common: list[str]  # labels of the common attack set
    missing: dict[CellKey, list[str]]  # labels of the attacks each student lacks
    shift: list[ShiftBaseline] = field(default_factory=list)
    harms: dict[CellKey, Harms] = field(default_factory=dict)

    @property
    def any_missing(self) -> bool:
        """Whether any student lacks an attack others have (else the table needs no column for it)."""
        return any(self.missing.values())

    @property
    def chart(self) -> Chart:
        """The frontier chart of the ranking shown first."""
        return next(r.chart for r in self.rankings if r.shown)


@dataclass(frozen=True)
class ShiftBaseline:
    """A reference row that sees no model (``blind``): how far member and non-member text alone tell them apart."""

    attack: str
    auc: Estimate  # mean over seeds, CI over seeds and samples (stats.seed_interval), as every other figure
    tpr: float | None  # mean TPR@1%FPR over seeds


def shift_baselines(board: Board, records: Sequence[Record]) -> list[ShiftBaseline]:
    """The reference baselines (``blind``) of the board's task and protocol, counted once per seed (they see no
    model, so every target of a seed has the same value)."""
    found: dict[str, dict[int, Record]] = defaultdict(dict)
    for r in records:
        if r.get("reference") and r["task"] == board.task and protocol_of(r) == board.protocol:
            found[r["attack"]].setdefault(r["seed"], r)
    out = []
    for attack, by_seed_record in sorted(found.items()):
        rows = list(by_seed_record.values())
        tprs = [float(r["tpr_at_1pct_fpr"]) for r in rows if isinstance(r.get("tpr_at_1pct_fpr"), (int, float))]
        out.append(ShiftBaseline(attack, estimate([float(r["auc"]) for r in rows], [r.get("auc_ci") for r in rows]),
                                 fmean(tprs) if tprs else None))
    return out


def board_view(board: Board, records: Sequence[Record] = ()) -> BoardView:
    students = board.students
    hrefs = {c.key: entry_file(c.key) for c in students}
    labels, variants = attack_labels(students + board.references), variant_labels(students)
    rankings = [
        RankingView(m, label, board.rankings[m], frontier_chart(board, board.rankings[m], m, hrefs), m == board.metric,
                    defense_costs(board.rankings[m]))
        for m, label in RISK_METRICS.items()
    ]
    rankings.sort(key=lambda r: not r.shown)  # the default ranking first in the page
    return BoardView(
        board,
        slug(board.protocol),
        rankings,
        heat_map(board, labels, variants, hrefs),
        variants,
        hrefs,
        labels,
        sorted(labels[k] for k in board.common),
        {c.key: [labels[k] for k in board.missing(c)] for c in students},
        shift_baselines(board, records),
        {c.key: harms(c) for c in students},
    )


@dataclass
class ProvenanceGroup:
    """Provenance shared by some records of one replicate (usually all of its attacks)."""

    attacks: list[str]
    fields: dict[str, Any]


@dataclass
class ReplicateView:
    """One seed of a cell: the runs that measured it (agreeing, or the build would have stopped)."""

    seed: int
    runs: list[str]
    groups: list[ProvenanceGroup]


def _provenance_fields(record: Record) -> dict[str, Any]:
    """Provenance shown for a record: version, commit, schema, provenance dict, and any unknown fields."""
    shown: dict[str, Any] = {
        k: record.get(k) for k in ("kdbench_version", "git_commit", "schema_version") if k in record
    }
    provenance = {k: v for k, v in (record.get("provenance") or {}).items() if k != PER_BLOCK_FIELD}
    shown.update(provenance)
    numbers = (int, float)
    shown.update(
        {
            k: v
            for k, v in record.items()
            if k not in KNOWN_FIELDS
            and k not in MEMBER_TEXT_FIELDS
            and (isinstance(v, bool) or not isinstance(v, numbers))
        }
    )
    return shown


def replicate_views(cell: Cell, labels: dict[str, str]) -> list[ReplicateView]:
    """Per seed: the runs behind it, the distinct provenance blocks and which attacks carry each."""
    views = []
    for seed, records in by_seed(cell.records).items():
        groups: dict[str, ProvenanceGroup] = {}
        for record in records:
            fields = {"run_id": record["run_id"], **_provenance_fields(record)}
            group = groups.setdefault(canonical(fields), ProvenanceGroup([], fields))
            group.attacks.append(labels.get(attack_key(record)) or str(record["attack"]))
        views.append(ReplicateView(seed, sorted({str(r["run_id"]) for r in records}), list(groups.values())))
    return views


def per_replicate(cell: Cell, get: Callable[[Record], Any]) -> dict[int, Any]:
    """One value per seed (the first record that has it): model-level data repeated on each attack."""
    seen: dict[int, Any] = {}
    for seed, records in by_seed(cell.records).items():
        value = next((v for v in map(get, records) if v is not None), None)
        if value is not None:
            seen[seed] = value
    return seen


def _first_per_replicate(cell: Cell, get: Callable[[Record], Any]) -> list[Any]:
    return list(per_replicate(cell, get).values())


@dataclass
class StatRow:
    name: str
    mean: float
    low: float
    high: float
    n: int


def memorization_rows(cell: Cell, field_name: str = "memorization") -> list[StatRow]:
    """Each numeric statistic of a record's ``memorization`` (or ``pii_leakage``) dict, averaged over replicates
    (min-max beside it)."""
    values: dict[str, list[float]] = defaultdict(list)
    for memo in _first_per_replicate(cell, lambda r: r.get(field_name)):
        for name, value in memo.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name].append(float(value))
    return [StatRow(n, fmean(v), min(v), max(v), len(v)) for n, v in sorted(values.items())]


@dataclass(frozen=True)
class Harms:
    """What a ranked row shows beside membership risk, as means over replicates (None: not measured): the
    members' mean memorization rate (METHODS.md §5) and the fraction of members' secret PII values emitted,
    greedily and in the best of ``k`` samples."""

    memorized: float | None
    pii: float | None
    pii_best_of_k: float | None
    k: int | None


def harms(cell: Cell) -> Harms:
    rows = {field_name: {r.name: r.mean for r in memorization_rows(cell, field_name)}
            for field_name in ("memorization", "pii_leakage")}
    pii = rows["pii_leakage"]
    k = pii.get("k")
    return Harms(rows["memorization"].get("members"), pii.get("members"), pii.get("members_best_of_k"),
                 int(k) if k else None)


def per_block_values(cell: Cell) -> list[float]:
    """Per-block AUC averaged over replicates (those with the most common block count), or [] when absent."""
    lists = [
        v
        for v in _first_per_replicate(cell, lambda r: (r.get("provenance") or {}).get(PER_BLOCK_FIELD))
        if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)
    ]
    if not lists:
        return []
    length = Counter(len(v) for v in lists).most_common(1)[0][0]
    same = [v for v in lists if len(v) == length]
    return [fmean(float(v[i]) for v in same) for i in range(length)]


@dataclass
class AttackView:
    summary: AttackSummary
    label: str
    roc: Chart | None
    members: str


def attack_views(cell: Cell, labels: dict[str, str]) -> list[AttackView]:
    views = []
    for summary in cell.attacks:
        label = labels.get(summary.key, summary.attack)
        counts = sorted({f"{r['n_members']}/{r['n_nonmembers']}" for r in summary.records})
        views.append(AttackView(summary, label, roc_chart(summary, label), ", ".join(counts)))
    return views


@dataclass
class MemberText:
    label: str
    text: str


def member_texts(cell: Cell) -> list[MemberText]:
    """Member-text fields, pretty-printed (only reachable when the build was asked to keep them)."""
    found = []
    for record in cell.records:
        for name in sorted(MEMBER_TEXT_FIELDS & record.keys()):
            label = f"{name} — {record['attack']}, run {record['run_id']}, seed {record['seed']}"
            found.append(MemberText(label, json.dumps(record[name], indent=2, ensure_ascii=False)))
    return found


# ------------------------------------------------------------------------------------------------ rendering


@dataclass
class Renderer:
    """Renders pages with the shared layout; counts pages written."""

    out: Path
    env: jinja2.Environment
    css: Markup
    js: Markup
    pages: int = 0

    def page(self, template: str, path: str, root: str, **context: Any) -> None:
        html = self.env.get_template(template).render(
            css=self.css, js=self.js, root=root, version=__version__, **context
        )
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html, encoding="utf-8")
        self.pages += 1


def _metric_names(cell: Cell) -> list[str]:
    return sorted({name for attack in cell.attacks for name in attack.metrics})


def data_attribution(task_name: str) -> str | None:
    """The license line of a task's data (e.g. Dolly's CC BY-SA 3.0), from its manifest's ``source.origin``,
    so pages built on licensed data carry the attribution it requires. None for generated or unknown tasks."""
    try:
        task = load_task(task_name)
    except KdbenchError:
        return None
    return attribution(task)


def render_site(
    boards: Sequence[Board], records: Sequence[Record], out: Path, include_member_text: bool = False
) -> int:
    """Write index, task and entry pages and the merged data file into ``out``; return the page count."""
    root = resource_root()
    renderer = Renderer(out, environment(root), static_text("site.css", root), static_text("site.js", root))
    tasks: dict[str, list[BoardView]] = defaultdict(list)
    for board in boards:
        tasks[board.task].append(board_view(board, records))
    task_dirs = {task: slug(task) for task in tasks}
    first = boards[0] if boards else None
    renderer.page(
        "index.html",
        "index.html",
        "",
        tasks=tasks,
        task_dirs=task_dirs,
        n_records=len(records),
        metric_label=RISK_METRICS[first.metric if first else DEFAULT_METRIC],
        floor=first.floor.fraction if first else DEFAULT_UTILITY_FLOOR,
    )
    for task, views in tasks.items():
        renderer.page("task.html", f"{task_dirs[task]}/index.html", "../", task=task, views=views,
                      attribution=data_attribution(task))
        for view in views:
            for cell in view.board.students:
                _render_entry(renderer, task_dirs[task], view, cell, include_member_text)
    with (out / "results.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n")
    return renderer.pages


def _render_entry(renderer: Renderer, task_dir: str, view: BoardView, cell: Cell, include_member_text: bool) -> None:
    ranks = [(r, next((e for e in r.entries if e.cell.key == cell.key), None)) for r in view.rankings]
    blocks = per_block_values(cell)
    renderer.page(
        "entry.html",
        f"{task_dir}/{view.hrefs[cell.key]}",
        "../../",
        view=view,
        board=view.board,
        entry=ranks[0][1],  # in the ranking shown first; None when the board's common attacks are not this cell's
        ranks=ranks,
        missing=view.missing[cell.key],
        cell=cell,
        variant=view.variants.get(cell.key, ""),
        attacks=attack_views(cell, view.attack_labels),
        metric_names=_metric_names(cell),
        costs=[(r, r.costs[cell.key]) for r in view.rankings if cell.key in r.costs],
        defense_reports=per_replicate(cell, lambda r: r.get("defense_report") or None),
        memorization=memorization_rows(cell),
        pii=memorization_rows(cell, "pii_leakage"),
        blocks=blocks,
        block_chart=per_block_chart(blocks) if blocks else None,
        replicates=replicate_views(cell, view.attack_labels),
        member_text=member_texts(cell) if include_member_text else [],
    )
