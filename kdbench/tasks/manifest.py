"""Task manifests (``tasks/<name>.yaml``) and the splits they define (docs/tasks.md).

A manifest is plain YAML read safely (no executable tags, no key given twice), merged with the files it ``include``s
and checked strictly: every problem names the file and the dotted key. The splits are content-hashed per role;
when a split manifest ``tasks/splits/<name>.json`` is shipped, the splits a run computes must match it, so two
people can prove they evaluated identical data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

from kdbench.core.data import (
    ALPACA_NO_CONTEXT,
    ALPACA_WITH_CONTEXT,
    PromptTemplate,
)
from kdbench.core.errors import TaskError, UnknownNameError
from kdbench.core.schema import Field, check
from kdbench.core.types import SCHEDULES, TrainConfig
from kdbench.core.yamlfile import read_yaml

ROLES = ("private", "public", "holdout", "eval")
PROTOCOLS = ("shuffle", "dolly-z", "ranges", "eval-only")
SPLIT_MANIFEST_FORMAT = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # becomes a file name: tasks/splits/<name>.json
_NUM = (int, float)
_TRAIN = Field((dict,), children={
    "lr": Field(_NUM, required=True, minimum=0),
    "epochs": Field((int,), required=True, minimum=1),
    "batch_size": Field((int,), minimum=1),
    "weight_decay": Field(_NUM, minimum=0),
    "grad_clip": Field(_NUM, minimum=0),
    "warmup_ratio": Field(_NUM, minimum=0),
    "warmup_steps": Field((int,), minimum=0),
    "schedule": Field((str,), choices=SCHEDULES),
})
_ROLE_INTS = {role: Field((int,), minimum=0) for role in ROLES}
SCHEMA: dict[str, Field] = {
    "name": Field((str,), required=True),
    "version": Field((int,), required=True, minimum=1),
    "include": Field((str, list), values=Field((str,))),
    "description": Field((str,)),
    "tags": Field((list,), values=Field((str,))),
    "seed": Field((int,), minimum=0),
    "source": Field((dict,), required=True, children={
        "generator": Field((str,)),
        "params": Field((dict,), values=Field((int, float, str, list))),
        "hub": Field((dict,), children={
            "id": Field((str,), required=True),
            "revision": Field((str,), required=True),
            "data_files": Field((str,), required=True),
            "split": Field((str,)),
            "local": Field((str,)),
        }),
        "file": Field((str,)),
        "format": Field((str,), choices=("jsonl", "json", "csv", "parquet")),
        "sha256": Field((str,)),
        "rows": Field((int,), minimum=0),
        "origin": Field((dict,), children={
            "repo": Field((str,), required=True),
            "revision": Field((str,), required=True),
            "path": Field((str,)),
            "url": Field((str,)),
            "license": Field((str,)),
        }),
        "id_prefix": Field((str,)),
    }),
    "fields": Field((dict,), children={
        key: Field((str,)) for key in ("instruction", "context", "response", "category", "id")
    }),
    "template": Field((dict,), children={
        "with_context": Field((str,)),
        "no_context": Field((str,)),
    }),
    "splits": Field((dict,), required=True, children={
        "protocol": Field((str,), choices=PROTOCOLS),
        "sizes": Field((dict,), children=_ROLE_INTS),
        "holdout_rows": Field((int,), minimum=1),
        "eval_rows": Field((int,), minimum=1),
        "ranges": Field((dict,), children={role: Field((list,), values=Field((int,), minimum=0)) for role in ROLES}),
        "categories": Field((list,), values=Field((str,))),
    }),
    "distill_on": Field((str,), choices=("public", "private")),
    "pretrain_text": Field((str,)),
    # per-distiller parameter defaults ([Z]'s learning rates, lm_coef, MiniLLM's iterations); the user's win
    "distillers": Field((dict,), values=Field((dict,), values=Field((int, float, str)))),
    "evaluation": Field((dict,), children={
        "n_attack": Field((int,), minimum=2),
        "n_nonmembers": Field((int,), minimum=2),
        "n_eval": Field((int,), minimum=1),
        "max_new_tokens": Field((int,), minimum=1),
        "memorization_new_tokens": Field((int,), minimum=1),
        "memorization_compare": Field((int,), minimum=1),
        "pii_samples": Field((int,), minimum=0),
        "bootstrap": Field((int,), minimum=10),
    }),
    "models": Field((dict,), children={
        "teacher": Field((str,)),
        "student": Field((str,)),
        "vocab_size": Field((int,), minimum=300),
        "max_prompt_tokens": Field((int,), minimum=8),
        "max_total_tokens": Field((int,), minimum=16),
    }),
    "training": Field((dict,), children={stage: _TRAIN for stage in ("teacher", "baseline", "student")}),
}
# Keys of ``splits`` each protocol takes (besides ``protocol`` and ``categories``), and the roles it fills.
_PROTOCOL_KEYS = {
    "shuffle": {"sizes"},
    "dolly-z": {"holdout_rows", "eval_rows", "sizes"},
    "ranges": {"ranges", "sizes"},
    "eval-only": {"sizes"},
}


@dataclass(frozen=True)
class Evaluation:
    n_attack: int = 200  # members drawn from private, the same number of non-members from holdout
    # More non-members than members, for low-FPR TPRs: n non-members resolve FPR in steps of 1/n (0.1% needs 1,000).
    n_nonmembers: int | None = None  # None: n_attack
    n_eval: int = 100
    max_new_tokens: int = 64
    memorization_new_tokens: int = 64  # METHODS.md §5: greedy, 64 new tokens, compare the first 32
    memorization_compare: int = 32
    # best-of-k PII leakage: k temperature-1 samples per prompt that holds a secret value (0: greedy only)
    pii_samples: int = 0
    bootstrap: int = 1000


@dataclass(frozen=True)
class Models:
    teacher: str = "builtin:gpt2-tiny-teacher"
    student: str = "builtin:gpt2-tiny-student"
    vocab_size: int = 2000  # for the BPE tokenizer trained on the public split (built-in models only)
    max_prompt_tokens: int = 256
    max_total_tokens: int = 512


@dataclass(frozen=True)
class Task:
    """A loaded, validated task manifest."""

    name: str
    version: int
    path: Path
    source: dict[str, Any]
    sizes: dict[str, int]
    seed: int = 0
    description: str = ""
    tags: tuple[str, ...] = ()
    protocol: str = "shuffle"
    distill_on: str = "public"
    pretrain_text: str | None = None  # a local text file (one document per line) for distillers' lm_coef term
    distillers: dict[str, dict[str, Any]] = field(default_factory=dict)  # parameter defaults per distiller
    template: PromptTemplate = field(default_factory=PromptTemplate)
    evaluation: Evaluation = field(default_factory=Evaluation)
    models: Models = field(default_factory=Models)
    raw: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    holdout_rows: int | None = None
    eval_rows: int | None = None
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    includes: tuple[Path, ...] = ()

    @cached_property
    def training(self) -> dict[str, TrainConfig]:
        """Per-stage optimisation settings (:class:`~kdbench.core.types.TrainConfig`, which imports no torch)."""
        return {stage: TrainConfig(**cfg) for stage, cfg in self.raw.get("training", {}).items()}

    @property
    def source_kind(self) -> str:
        return next(kind for kind in ("generator", "hub", "file") if kind in self.source)

    @property
    def eval_only(self) -> bool:
        """A utility set: only an ``eval`` role, nothing to train a teacher on or attack."""
        return self.protocol == "eval-only"

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this task fills (all four, or ``eval`` alone)."""
        return ("eval",) if self.eval_only else ROLES


# --- finding and loading manifests --------------------------------------------------------------------------------
def tasks_dir() -> Path:
    return Path(str(resources.files("kdbench_tasks")))


def available_tasks() -> dict[str, Path]:
    """Shipped tasks by name; files starting with ``_`` are shared parts for ``include:``, not tasks."""
    return {p.stem: p for p in sorted(tasks_dir().glob("*.yaml")) if not p.name.startswith("_")}


def find_task(name_or_path: str) -> Path:
    """A shipped task by name, or a manifest file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise TaskError(f"{candidate}: no such task manifest file.")
        return candidate
    tasks = available_tasks()
    if name_or_path not in tasks:
        raise UnknownNameError("task", name_or_path, tasks, hint="See `kdbench tasks list`, or pass a YAML path.")
    return tasks[name_or_path].resolve()  # the real file, not an editable install's link to it


def load_task(name_or_path: str) -> Task:
    """Read, merge (``include:``) and validate a manifest; data is not touched."""
    path = find_task(name_or_path)
    data, includes = read_manifest(path)
    check(data, SCHEMA, path)
    _check_semantics(data, path)
    return _build(data, path, includes)


def read_manifest(path: Path) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """The manifest merged over everything it includes (depth first, later wins), and the included files."""
    included: list[Path] = []
    data = _load_document(path, (path.resolve(),), included)
    return data, tuple(included)


def _load_document(path: Path, stack: tuple[Path, ...], included: list[Path]) -> dict[str, Any]:
    data = _read_yaml(path)
    check(data, SCHEMA, path, partial=True)  # report bad keys in the file that has them
    merged: dict[str, Any] = {}
    names = data.pop("include", [])
    for name in [names] if isinstance(names, str) else names:
        target = (path.parent / name).resolve()
        if target in stack:
            chain = " -> ".join(p.name for p in (*stack, target))
            raise TaskError(f"{path}: key 'include': include cycle ({chain}).")
        if not target.is_file():
            raise TaskError(f"{path}: key 'include': no such file {name!r} (looked for {target}).")
        included.append(target)
        merged = _deep_merge(merged, _load_document(target, (*stack, target), included))
    return _deep_merge(_without_stale_origin(merged, data), data)


def _without_stale_origin(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``source.origin`` says where the pinned file comes from; a manifest that pins another file (its own
    ``source.sha256``) without its own origin does not inherit one that describes a different file."""
    source, pinned = base.get("source"), override.get("source")
    if not isinstance(source, dict) or not isinstance(pinned, dict) or "origin" not in source:
        return base
    if "sha256" in pinned and "origin" not in pinned and pinned["sha256"] != source.get("sha256"):
        return {**base, "source": {k: v for k, v in source.items() if k != "origin"}}
    return base


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, TaskError, "manifest")
    if not isinstance(data, dict):
        raise TaskError(f"{path}: the manifest must be a mapping of keys, got {type(data).__name__}.")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced by the override."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_semantics(data: dict[str, Any], path: Path) -> None:
    """What the schema cannot say: one source kind, the keys each protocol needs, no empty or overlapping roles."""
    if not _NAME.match(data["name"]):
        raise TaskError(f"{path}: key 'name' is {data['name']!r}; use lowercase letters, digits, '-', '_' and '.'.")
    _check_source(data, path)
    _check_splits(data["splits"], path)
    if data["splits"].get("protocol") == "eval-only" and "distill_on" in data:
        raise TaskError(f"{path}: key 'distill_on' does not apply to an eval-only task (it trains nothing).")


def _check_source(data: dict[str, Any], path: Path) -> None:
    source = data["source"]
    kinds = [kind for kind in ("generator", "hub", "file") if kind in source]
    if len(kinds) != 1:
        raise TaskError(
            f"{path}: key 'source' must name exactly one of 'generator', 'hub' or 'file' "
            f"(found {', '.join(kinds) or 'none'})."
        )
    if kinds[0] == "generator":
        for key in ("format", "sha256", "rows", "origin", "id_prefix"):
            if key in source:
                raise TaskError(f"{path}: key 'source.{key}' applies to hub and file sources, not generators.")
        if "fields" in data:
            raise TaskError(f"{path}: key 'fields' applies to hub and file sources; generators produce the fields.")
    elif "params" in source:
        raise TaskError(f"{path}: key 'source.params' applies only to 'source.generator'.")


def _check_splits(splits: dict[str, Any], path: Path) -> None:
    protocol = splits.get("protocol", "shuffle")
    for key in splits:
        if key not in _PROTOCOL_KEYS[protocol] | {"protocol", "categories"}:
            raise TaskError(f"{path}: key 'splits.{key}' does not apply to protocol {protocol!r}.")
    sizes = splits.get("sizes", {})
    required: dict[str, Sequence[str]] = {
        "shuffle": [f"sizes.{role}" for role in ROLES],
        "dolly-z": ["holdout_rows", "eval_rows"],
        "ranges": [f"ranges.{role}" for role in ROLES],
        "eval-only": [],
    }
    for dotted in required[protocol]:
        group, _, key = dotted.rpartition(".")
        if key not in (splits.get(group, {}) if group else splits):
            raise TaskError(f"{path}: missing required key 'splits.{dotted}' (protocol {protocol!r}).")
    if protocol == "eval-only" and set(sizes) - {"eval"}:
        extra = sorted(set(sizes) - {"eval"})[0]
        raise TaskError(f"{path}: key 'splits.sizes.{extra}': an eval-only task has only an 'eval' role.")
    for role, size in sizes.items():
        if size == 0:
            raise TaskError(f"{path}: key 'splits.sizes.{role}' is 0: the {role!r} role would be empty.")
    if "categories" in splits and not splits["categories"]:
        raise TaskError(f"{path}: key 'splits.categories' is empty: every role would be empty.")
    if protocol == "ranges":
        _check_ranges(splits["ranges"], path)


def _check_ranges(ranges: dict[str, list[int]], path: Path) -> None:
    """Each role a half-open row range [start, end), non-empty, and no two overlapping."""
    for role, bounds in ranges.items():
        if len(bounds) != 2 or bounds[0] >= bounds[1]:
            raise TaskError(
                f"{path}: key 'splits.ranges.{role}' is {bounds!r}; give [start, end] with start < end (rows start "
                "at 0, end is excluded), so the role is not empty."
            )
    ordered = sorted(ranges.items(), key=lambda item: item[1][0])
    for (first, (_, end)), (second, (start, _)) in pairwise(ordered):
        if start < end:
            raise TaskError(
                f"{path}: key 'splits.ranges.{second}' overlaps 'splits.ranges.{first}' (rows {start}-{end - 1}); "
                "roles must be disjoint."
            )


def _build(data: dict[str, Any], path: Path, includes: tuple[Path, ...]) -> Task:
    template = data.get("template", {})
    splits = data["splits"]
    return Task(
        name=data["name"],
        version=data["version"],
        path=path,
        source=data["source"],
        sizes=dict(splits.get("sizes", {})),
        seed=data.get("seed", 0),
        description=data.get("description", ""),
        tags=tuple(data.get("tags", ())),
        protocol=splits.get("protocol", "shuffle"),
        distill_on=data.get("distill_on", "public"),
        pretrain_text=data.get("pretrain_text"),
        distillers={name: dict(values) for name, values in data.get("distillers", {}).items()},
        template=PromptTemplate(
            template.get("with_context", ALPACA_WITH_CONTEXT), template.get("no_context", ALPACA_NO_CONTEXT)
        ),
        evaluation=Evaluation(**data.get("evaluation", {})),
        models=Models(**data.get("models", {})),
        raw=data,
        fields=dict(data.get("fields", {})),
        categories=tuple(splits.get("categories", ())),
        holdout_rows=splits.get("holdout_rows"),
        eval_rows=splits.get("eval_rows"),
        ranges={role: (bounds[0], bounds[1]) for role, bounds in splits.get("ranges", {}).items()},
        includes=includes,
    )
