"""Plugin specifications from the command line: ``gkd:lmbda=0.5,beta=0.5``.

A list option is split on commas; a piece of the form ``key=value`` with no ``:`` continues the parameters of the
plugin before it, so ``--distiller kd,gkd:lmbda=0.5,beta=0.5`` is two specs. Values are coerced to the type of the
``Params`` dataclass field; unknown keys answer "did you mean".
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from kdbench.core.errors import ParameterError, unknown_name_message


@dataclass(frozen=True)
class PluginSpec:
    """A plugin name and the raw ``key=value`` strings given for it."""

    name: str
    raw: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.raw:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.raw)


def parse_specs(values: tuple[str, ...] | list[str] | str) -> list[PluginSpec]:
    """Parse one or more list options into specs (``all`` is kept as a name; the caller expands it)."""
    if isinstance(values, str):
        values = [values]
    specs: list[PluginSpec] = []
    for value in values:
        for piece in (p.strip() for p in value.split(",")):
            if not piece:
                continue
            if ":" in piece:
                name, _, first = piece.partition(":")
                specs.append(PluginSpec(name.strip(), _pairs(first, piece)))
            elif "=" in piece:
                if not specs:
                    raise ParameterError(f"Parameter {piece!r} comes before any plugin name; write NAME:{piece}.")
                last = specs[-1]
                specs[-1] = PluginSpec(last.name, last.raw + _pairs(piece, piece))
            else:
                specs.append(PluginSpec(piece))
    return specs


def _pairs(text: str, context: str) -> tuple[tuple[str, str], ...]:
    if not text.strip():
        return ()
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParameterError(f"Cannot read parameter {text!r} in {context!r}; write key=value.")
    return ((key.strip(), value.strip()),)


def build_params(params_cls: type[Any], raw: tuple[tuple[str, str], ...], owner: str) -> Any:
    """Instantiate ``params_cls`` from raw strings, coercing each to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(params_cls) if f.init}
    hints = typing.get_type_hints(params_cls)
    values: dict[str, Any] = {}
    for key, text in raw:
        if key in values:
            raise ParameterError(f"{owner}: parameter {key!r} is given twice; give it once.")
        if key not in fields:
            raise ParameterError(unknown_name_message(f"parameter of {owner}", key, fields))
        values[key] = _coerce(hints[key], text, f"{owner}:{key}")
    try:
        return params_cls(**values)
    except ParameterError:
        raise
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"Bad parameters for {owner}: {exc}") from exc


def params_dict(params: Any) -> dict[str, Any]:
    """The parameters as a JSON-ready dict, for cache keys and results."""
    return dataclasses.asdict(params)


def _coerce(hint: Any, text: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null") and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:  # ``float | None``: the one type's own message, not a wrapped copy of it
            return _coerce(options[0], text, where)
        errors = []
        for option in options:
            try:
                return _coerce(option, text, where)
            except ParameterError as exc:
                errors.append(str(exc).removeprefix(f"{where}: ").rstrip("."))
        raise ParameterError(f"{where}: cannot read {text!r} ({'; '.join(errors)}).")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if text not in choices:
            raise ParameterError(unknown_name_message(f"value for {where}", text, [str(c) for c in choices]))
        return text
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ParameterError(f"{where}: expected true or false, got {text!r}.")
    if hint in (int, float):
        try:
            value = hint(text)
        except ValueError:
            raise ParameterError(f"{where}: expected {hint.__name__}, got {text!r}.") from None
        if math.isnan(value):  # never a meaningful setting; inf is (gradnorm:p=inf)
            raise ParameterError(f"{where}: expected a number, got {text!r}.")
        return value
    if hint is str:
        return text
    raise ParameterError(f"{where}: parameters of type {hint!r} cannot be set from the command line.")


def check_range(owner: str, name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise a ParameterError unless low <= value <= high (a helper for ``Params.__post_init__``); NaN is never
    in range (every comparison with it is false, so it would otherwise slip through)."""
    if math.isnan(value):
        raise ParameterError(f"{owner}: {name}=nan is not a number; give a value"
                             + (f" within [{'-inf' if low is None else low}, {'inf' if high is None else high}]."
                                if low is not None or high is not None else "."))
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ParameterError(f"{owner}: {name}={value!r} is outside {bounds}.")
