"""Reading the YAML files users write (task manifests, grid files): safe, UTF-8, and strict about duplicate keys,
which plain ``yaml.safe_load`` resolves silently by keeping the last one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdbench.core.errors import KdbenchError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (no executable tags) that refuses a mapping giving one key twice."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _value in node.value:  # the mapping's own keys: a merge (<<) may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {first}); keep one", key_node.start_mark
            )
        seen[key] = key_node
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: Path, error: type[KdbenchError], what: str) -> Any:
    """The document in ``path``; unreadable, non-UTF-8 or invalid YAML (duplicate keys included) raise ``error``
    naming the file and ``what`` it should be."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}).") from None
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: the {what} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8."
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML (or uses a tag that is not allowed): {exc}") from None
