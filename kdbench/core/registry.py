"""Discover plugins through the ``kdbench`` entry-point group and collect what they register.

Built-in plugins are found exactly like third-party ones. Errors name the entry point, its distribution and the
original error; a name registered twice is an error; unknown names answer "did you mean".
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, cast

import pluggy

import kdbench.hookspecs as hookspecs
from kdbench.core.errors import PluginError, UnknownNameError

ENTRY_POINT_GROUP = "kdbench"
KINDS = ("distillers", "attacks", "defenses")
_SINGULAR = {"distillers": "distiller", "attacks": "attack", "defenses": "defense"}
# The members each kind's class must define (beyond name, description and Params).
_REQUIRED_METHODS = {"distillers": ("distill",), "attacks": ("score",), "defenses": ()}
# Characters the command line reads as structure in a plugin list (kdbench.core.params): never in a name; nor is
# "+" in a defense's, which composes stacks (kdbench.run.grid).
_NAME_SEPARATORS = (",", ":", "=")


@dataclass(frozen=True)
class PluginInfo:
    """One registered class and where it came from."""

    kind: str
    name: str
    cls: type[Any]
    description: str
    distribution: str
    version: str
    entry_point: str


@dataclass
class Registry:
    """Everything the installed plugins registered, by kind and name."""

    entries: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self, kind: str) -> list[PluginInfo]:
        return [self.entries[kind][name] for name in self.names(kind)]

    def get(self, kind: str, name: str) -> PluginInfo:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownNameError(
                _SINGULAR[kind], name, self.entries[kind], hint=f"See `kdbench list {kind}`."
            ) from None


def _entry_points(group: str) -> Iterator[tuple[metadata.EntryPoint, str, str]]:
    """Entry points of ``group`` with their distribution's name and version, deduplicated."""
    seen: set[tuple[str, str]] = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group != group or (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            yield ep, dist_name, dist.version


def _check_class(kind: str, cls: Any, source: str) -> None:
    """Refuse a registration that cannot satisfy the kind's Protocol, naming what is missing."""
    where = f"{_SINGULAR[kind]} registered by {source}"
    if not isinstance(cls, type):
        raise PluginError(f"The {where} is {cls!r}, not a class. Register the class itself.")
    cls = cast(Any, cls)  # a plugin class: its attributes are checked below
    missing = [attr for attr in ("name", "description", "Params") if not hasattr(cls, attr)]
    missing += [m for m in _REQUIRED_METHODS[kind] if not callable(getattr(cls, m, None))]
    if kind == "attacks" and not hasattr(cls, "needs"):
        missing.append("needs")
    if kind == "defenses" and not hasattr(cls, "stages"):
        missing.append("stages")
    if missing:
        raise PluginError(f"The {where} ({cls.__qualname__}) lacks: {', '.join(missing)}.")
    if not isinstance(cls.name, str) or not cls.name:
        raise PluginError(f"The {where} ({cls.__qualname__}) has no usable name: {cls.name!r}.")
    separators = _NAME_SEPARATORS + (("+",) if kind == "defenses" else ())
    bad = [c for c in cls.name if c in separators]
    if bad:
        raise PluginError(
            f"The {where} ({cls.__qualname__}) has the name {cls.name!r}, which contains {bad[0]!r}: the command "
            f"line splits {kind} lists on {' '.join(separators)}. Rename it (e.g. with '-')."
        )
    if not is_dataclass(cls.Params):
        raise PluginError(f"The {where} ({cls.name}): Params must be a dataclass, got {cls.Params!r}.")
    required = [f.name for f in fields(cls.Params)
                if f.init and f.default is MISSING and f.default_factory is MISSING]
    if required:
        raise PluginError(
            f"The {where} ({cls.name}): Params field(s) {', '.join(required)} have no default, so "
            f"`--{_SINGULAR[kind]} {cls.name}` alone could not build them. Give every field a default."
        )


def build_registry(group: str = ENTRY_POINT_GROUP) -> Registry:
    """Load every entry point of ``group``, call its register hooks, and return what was registered."""
    pm = pluggy.PluginManager("kdbench")
    pm.add_hookspecs(hookspecs)
    origins: dict[str, tuple[str, str, str]] = {}
    for ep, dist_name, dist_version in _entry_points(group):
        label = f"entry point {ep.name!r} ({ep.value}) of distribution {dist_name} {dist_version}"
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"Could not load plugin {label}: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall it (pip uninstall {dist_name})."
            ) from exc
        try:
            pm.register(module, name=ep.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"Plugin {label} could not be registered: {exc}") from exc
        origins[ep.name] = (label, dist_name, dist_version)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"A plugin implements a hook kdbench does not define: {exc}") from exc

    registry = Registry()
    for kind in KINDS:
        hook = getattr(pm.hook, f"register_{kind}")
        for impl in hook.get_hookimpls():
            label, dist_name, dist_version = origins[impl.plugin_name]
            register = _registrar(registry, kind, impl.plugin_name, label, dist_name, dist_version)
            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"Plugin {label} failed in register_{kind}: {type(exc).__name__}: {exc}"
                ) from exc
    return registry


def _registrar(
    registry: Registry, kind: str, ep_name: str, label: str, dist_name: str, dist_version: str
) -> Callable[[type[Any]], None]:
    def register(cls: type[Any]) -> None:
        _check_class(kind, cls, label)
        existing = registry.entries[kind].get(cls.name)
        if existing is not None:
            raise PluginError(
                f"The {_SINGULAR[kind]} name {cls.name!r} is registered twice: by {existing.entry_point} "
                f"({existing.distribution}) and by {label}. Uninstall one of them."
            )
        description = (cls.description or "").strip().splitlines()[0] if cls.description else ""
        registry.entries[kind][cls.name] = PluginInfo(
            kind, cls.name, cls, description, dist_name, dist_version, ep_name
        )

    return register


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of the installed plugins, built once per process."""
    return build_registry()


@dataclass
class Resolved:
    """An instantiated plugin with its spec label and registry entry."""

    label: str
    instance: Any
    info: Any
