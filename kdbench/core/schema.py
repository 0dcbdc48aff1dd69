"""A tiny strict schema checker for YAML manifests: unknown keys, missing keys and wrong types are errors that
name the file and the dotted key. (Hand-written because the manifests are small and the messages matter.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.errors import TaskError, unknown_name_message


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = False
    children: dict[str, Field] | None = None  # for mappings with fixed keys
    values: Field | None = None  # for mappings with free keys, or lists: the type of each value
    minimum: float | None = None
    choices: tuple[Any, ...] | None = None
    default: Any = field(default=None)


def check(data: Any, schema: dict[str, Field], path: Path, prefix: str = "", partial: bool = False) -> None:
    """Raise TaskError naming ``path`` and the dotted key for the first problem found.

    ``partial`` skips required-key checks: a file that others ``include`` may hold only part of a manifest, yet its
    unknown keys and wrong types must still be reported against that file, not the one including it.
    """
    if not isinstance(data, dict):
        raise TaskError(f"{path}: {prefix.rstrip('.') or 'the manifest'} must be a mapping, got {type(data).__name__}.")
    for key in data:
        if key not in schema:
            message = unknown_name_message("key", str(key), schema, shown=repr(f"{prefix}{key}"))
            raise TaskError(f"{path}: {message[0].lower()}{message[1:]}")
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        if key not in data:
            if spec.required and not partial:
                raise TaskError(f"{path}: missing required key {dotted!r}.")
            continue
        _check_value(data[key], spec, path, dotted, partial)


def _check_value(value: Any, spec: Field, path: Path, dotted: str, partial: bool = False) -> None:
    if (isinstance(value, bool) and bool not in spec.types) or not isinstance(value, spec.types):
        expected = " or ".join(t.__name__ for t in spec.types)
        raise TaskError(f"{path}: key {dotted!r} must be {expected}, got {type(value).__name__} ({value!r}).")
    if spec.choices is not None and value not in spec.choices:
        raise TaskError(
            f"{path}: key {dotted!r} is {value!r}; " + unknown_name_message("value", str(value), map(str, spec.choices))
        )
    if spec.minimum is not None and isinstance(value, (int, float)) and value < spec.minimum:
        raise TaskError(f"{path}: key {dotted!r} is {value!r}, must be at least {spec.minimum:g}.")
    if spec.children is not None and isinstance(value, dict):
        check(value, spec.children, path, prefix=f"{dotted}.", partial=partial)
    elif spec.values is not None and isinstance(value, (dict, list)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check_value(item, spec.values, path, f"{dotted}.{key}", partial)
