"""Splits: role assignment, disjointness checks, and the split manifests that freeze them."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.data import (
    Example,
    content_hash,
    content_key,
)
from kdbench.core.errors import TaskError
from kdbench.tasks.manifest import ROLES, SPLIT_MANIFEST_FORMAT, Task
from kdbench.tasks.sources import load_source, pin_mismatch


@dataclass(frozen=True)
class Splits:
    """The examples of each role, their content hashes, and what they were computed from."""

    roles: dict[str, list[Example]]
    duplicates_dropped: int = 0  # exact content repeats in the source, dropped before splitting (first one kept)
    origin: dict[str, Any] = field(default_factory=dict)
    location: str = ""  # the data file or generator read, for messages

    def hashes(self) -> dict[str, str]:
        return {role: content_hash(examples) for role, examples in self.roles.items()}

    def manifest(self, task: Task) -> dict[str, Any]:
        return {
            "format": SPLIT_MANIFEST_FORMAT,
            "task": task.name,
            "version": task.version,
            "protocol": task.protocol,
            "seed": task.seed,
            "source": self.origin,
            "duplicates_dropped": self.duplicates_dropped,
            "roles": {
                role: {"n": len(ex), "sha256": content_hash(ex), "ids": [e.id for e in ex]}
                for role, ex in self.roles.items()
            },
        }


def dedupe(examples: Sequence[Example]) -> tuple[list[Example], list[int]]:
    """Examples without exact content repeats (the first is kept), and the source row of each kept one."""
    seen: set[str] = set()
    kept: list[Example] = []
    rows: list[int] = []
    for row, example in enumerate(examples):
        key = content_key(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
            rows.append(row)
    return kept, rows


def make_splits(
    task: Task, examples: Sequence[Example] | None = None, data_dir: Path | None = None, check_pin: bool = True
) -> Splits:
    """Assign examples to roles by the task's protocol; roles come out disjoint by content and never empty.
    ``check_pin=False`` splits a data file other than the pinned one (for ``show``/``verify`` to report on)."""
    origin: dict[str, Any] = {}
    location = ""
    if examples is None:
        loaded = load_source(task, data_dir, check_pin)
        examples, origin, location = loaded.examples, loaded.origin, loaded.location
    kept, rows = dedupe(examples)
    indices = _PROTOCOLS[task.protocol](task, kept, rows, _Source(len(examples), location or str(task.path)))
    if task.categories:
        indices = {role: [i for i in idx if kept[i].category in task.categories] for role, idx in indices.items()}
    if task.protocol != "shuffle":
        indices = {role: _take(task, role, idx) for role, idx in indices.items()}
    roles = {role: [kept[i] for i in indices[role]] for role in task.roles}
    _check_filled(task, roles)
    _check_disjoint(task, roles)
    return Splits(roles, len(examples) - len(kept), origin, location)


@dataclass(frozen=True)
class _Source:
    """What a protocol needs to know of the file besides the kept examples: its row count (before duplicates are
    dropped, so that row boundaries are file positions) and its name, for messages."""

    rows: int
    location: str


def _shuffle(task: Task, examples: list[Example], rows: list[int], source: _Source) -> dict[str, list[int]]:
    """Shuffled with the task seed, then cut into the four sizes in role order."""
    needed = sum(task.sizes[role] for role in ROLES)
    if len(examples) < needed:
        raise TaskError(
            f"{task.path}: key 'splits.sizes' asks for {needed} examples but the source has {len(examples)} "
            "distinct ones."
        )
    order = list(range(len(examples)))
    random.Random(task.seed).shuffle(order)
    out: dict[str, list[int]] = {}
    start = 0
    for role in ROLES:
        out[role] = order[start : start + task.sizes[role]]
        start += task.sizes[role]
    return out


def _dolly_z(task: Task, examples: list[Example], rows: list[int], source: _Source) -> dict[str, list[int]]:
    """[Z]: file rows before ``holdout_rows`` are non-members (``eval_rows`` of them, drawn with the seed, are the
    eval set); the rows after them are halved **by file position**, the first half private, the second public.

    [Z]'s ``tools/process_data_dolly.py`` cuts ``raw.jsonl`` at line ``dev_num`` (4,000) and its ``finetune.py``
    takes ``int(n / 2)`` of the remaining lines as private, without dropping any duplicate. So the boundary is
    ``holdout_rows + (file rows - holdout_rows) // 2``, fixed before duplicates are dropped: a repeat removes one
    example from a role but never moves the cut."""
    assert task.holdout_rows is not None and task.eval_rows is not None
    if source.rows <= task.holdout_rows:
        raise TaskError(
            f"{source.location}: {source.rows:,} rows, but task {task.name!r} ({task.path.name}, key "
            f"'splits.holdout_rows') holds out the first {task.holdout_rows:,} and needs rows after them for the "
            "private and public halves: the file is short (a truncated copy?) or not this task's data."
        )
    boundary = task.holdout_rows + (source.rows - task.holdout_rows) // 2
    pool = [i for i, row in enumerate(rows) if row < task.holdout_rows]
    if len(pool) <= task.eval_rows:
        raise TaskError(
            f"{task.path}: key 'splits.eval_rows' is {task.eval_rows}, but the first {task.holdout_rows} rows of "
            f"{source.location} hold only {len(pool)} distinct examples; eval and holdout both need some."
        )
    drawn = set(random.Random(task.seed).sample(pool, task.eval_rows))
    return {
        "private": [i for i, row in enumerate(rows) if task.holdout_rows <= row < boundary],
        "public": [i for i, row in enumerate(rows) if row >= boundary],
        "holdout": [i for i in pool if i not in drawn],
        "eval": [i for i in pool if i in drawn],
    }


def _ranges(task: Task, examples: list[Example], rows: list[int], source: _Source) -> dict[str, list[int]]:
    """Fixed source-row ranges per role, as the manifest gives them."""
    return {role: [i for i, row in enumerate(rows) if start <= row < end] for role, (start, end) in task.ranges.items()}


def _eval_only(task: Task, examples: list[Example], rows: list[int], source: _Source) -> dict[str, list[int]]:
    return {"eval": list(range(len(examples)))}


_PROTOCOLS = {"shuffle": _shuffle, "dolly-z": _dolly_z, "ranges": _ranges, "eval-only": _eval_only}


def _take(task: Task, role: str, indices: list[int]) -> list[int]:
    """Exactly ``splits.sizes.<role>`` of a role (drawn with the seed, kept in source order), or all of it."""
    size = task.sizes.get(role)
    if size is None:
        return indices
    if size > len(indices):
        raise TaskError(
            f"{task.path}: key 'splits.sizes.{role}' asks for {size} examples but the {task.protocol} protocol "
            f"gives the {role!r} role only {len(indices)}."
        )
    drawn = set(random.Random(f"{task.seed}:{role}").sample(indices, size))
    return [i for i in indices if i in drawn]


def _check_filled(task: Task, roles: dict[str, list[Example]]) -> None:
    for role, examples in roles.items():
        if not examples:
            where = "splits.categories" if task.categories else "splits"
            raise TaskError(
                f"{task.path}: key {where!r}: the {role!r} role is empty for this data; every role the "
                f"{task.protocol} protocol fills needs examples."
            )


def _check_disjoint(task: Task, roles: dict[str, list[Example]]) -> None:
    owner: dict[str, str] = {}
    for role, members in roles.items():
        for example in members:
            key = content_key(example)
            if key in owner and owner[key] != role:
                raise TaskError(
                    f"{task.path}: key 'splits': roles {owner[key]!r} and {role!r} share content (example "
                    f"{example.id}); splits must be disjoint by content."
                )
            owner[key] = role


def pinned_file_mismatch(task: Task, splits: Splits) -> str | None:
    """Why the data file read is not the one the manifest pins (``source.sha256``/``source.rows``), or None."""
    return pin_mismatch(task, splits.origin, splits.location or str(task.path)) if splits.location else None


# --- split manifests ----------------------------------------------------------------------------------------------
def split_manifest_path(task: Task) -> Path:
    """``splits/<name>.json`` beside the manifest's real file (symlinks resolved, so that in an editable install
    ``kdbench tasks freeze`` writes into the source tree, not into the installer's link farm)."""
    return task.path.resolve().parent / "splits" / f"{task.name}.json"


def read_split_manifest(path: Path) -> dict[str, Any]:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"{path}: cannot read the split manifest ({exc}).") from exc
    if not isinstance(recorded, dict) or not isinstance(recorded.get("roles"), dict):
        raise TaskError(f"{path}: not a split manifest (no 'roles' mapping).")
    return recorded


def compare_splits(task: Task, splits: Splits, recorded: dict[str, Any], path: Path) -> list[str]:
    """Every difference between computed splits and a split manifest, each naming the role and the data read."""
    problems: list[str] = []
    if recorded.get("version") != task.version:
        problems.append(
            f"{path}: frozen for version {recorded.get('version')} of {task.name!r}, but {task.path} is version "
            f"{task.version}; re-freeze with `kdbench tasks freeze {task.name}`."
        )
    read = splits.location or task.path
    for role in sorted(set(recorded["roles"]) | set(splits.roles), key=_role_order):
        frozen = recorded["roles"].get(role)
        computed = splits.roles.get(role)
        if frozen is None or computed is None:
            problems.append(f"{path}: role {role!r} is {'missing from' if frozen is None else 'not computed for'} "
                            "the split manifest.")
            continue
        digest = content_hash(computed)
        if digest != frozen.get("sha256"):
            problems.append(f"{path}: role {role!r} computed from {read} does not match the split manifest "
                            f"({_difference(computed, frozen, digest)}).")
    recorded_source = recorded.get("source", {})
    recorded_sha, computed_sha = recorded_source.get("sha256"), splits.origin.get("sha256")
    if problems and recorded_sha and computed_sha and recorded_sha != computed_sha:
        problems.append(
            f"{read}: this data file (sha256 {computed_sha}, {splits.origin.get('rows', '?')} rows) is not the one "
            f"the split manifest was frozen from (sha256 {recorded_sha}, {recorded_source.get('rows', '?')} rows)."
        )
    return problems


def check_split_manifest(task: Task, recorded: dict[str, Any], path: Path) -> list[str]:
    """Every inconsistency of a split manifest with itself and its task, without data: what a fresh checkout can
    prove (format, task, version, protocol, seed, roles and sizes, ids unique and disjoint, the pinned file)."""
    problems: list[str] = []
    expected = {"format": SPLIT_MANIFEST_FORMAT, "task": task.name, "version": task.version,
                "protocol": task.protocol, "seed": task.seed}
    for key, value in expected.items():
        if recorded.get(key) != value:
            problems.append(f"{path}: key {key!r} is {recorded.get(key)!r}, but {task.path.name} says {value!r}.")
    roles = recorded["roles"]
    if set(roles) != set(task.roles):
        problems.append(f"{path}: roles {sorted(roles)}, but a {task.protocol} task has {sorted(task.roles)}.")
    owner: dict[str, str] = {}
    for role, info in roles.items():
        ids = info.get("ids", []) if isinstance(info, dict) else []
        if not isinstance(info, dict) or not ids or info.get("n") != len(ids):
            problems.append(f"{path}: role {role!r} must list its ids, as many as its 'n' (a non-empty role).")
        if role in task.sizes and len(ids) != task.sizes[role]:
            problems.append(f"{path}: role {role!r} has {len(ids)} ids, but 'splits.sizes.{role}' is "
                            f"{task.sizes[role]}.")
        if not isinstance(info, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(info.get("sha256", ""))):
            problems.append(f"{path}: role {role!r} has no sha256 content hash.")
        if len(set(ids)) != len(ids):
            problems.append(f"{path}: role {role!r} lists an id twice.")
        for example_id in ids:
            if owner.setdefault(example_id, role) != role:
                problems.append(f"{path}: id {example_id!r} is in roles {owner[example_id]!r} and {role!r}.")
                break
    source = recorded.get("source", {})
    for key in ("sha256", "rows"):
        pinned = task.source.get(key)
        if pinned is not None and source.get(key) != pinned:
            problems.append(f"{path}: frozen from a file with {key} {source.get(key)}, but {task.path.name} pins "
                            f"'source.{key}' {pinned}; re-freeze from the pinned file.")
    return problems


def _role_order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)


def _difference(computed: list[Example], frozen: dict[str, Any], digest: str) -> str:
    ids = [e.id for e in computed]
    frozen_ids = list(frozen.get("ids", []))
    hashes = f"sha256 {digest[:12]}… vs frozen {str(frozen.get('sha256'))[:12]}…"
    if ids == frozen_ids:
        return f"{hashes}; same {len(ids)} ids, so the content of some of them changed"
    changed = len(set(ids) ^ set(frozen_ids))
    return f"{hashes}; {len(ids)} vs {len(frozen_ids)} examples, {changed} id(s) differ"


def verify_splits(task: Task, splits: Splits) -> bool:
    """Compare computed splits with the shipped split manifest: True when they match, False when there is none to
    compare with (unfrozen: results cannot be proven comparable); a mismatch raises TaskError."""
    path = split_manifest_path(task)
    if not path.exists():
        return False
    problems = compare_splits(task, splits, read_split_manifest(path), path)
    if problems:
        raise TaskError(
            " ".join(problems) + " The data or the generator changed; results would not be comparable. If the "
            f"change is intended, bump the task version and re-freeze with `kdbench tasks freeze {task.name}`."
        )
    return True


def freeze_splits(task: Task, splits: Splits, out: Path | None = None, force: bool = False) -> Path:
    """Write the split manifest (for maintainers); refuse to change an existing one unless ``force``."""
    path = out or split_manifest_path(task)
    if path.exists() and not force:
        problems = compare_splits(task, splits, read_split_manifest(path), path)
        if problems:
            raise TaskError(
                " ".join(problems) + " Refusing to overwrite a frozen split manifest: bump the task version and "
                "pass --force if the change is intended."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits.manifest(task), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
