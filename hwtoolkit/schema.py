"""Typed tables: a TOML table checked against a dataclass's annotated field types.

Shared by the experiment config and by every target's options, so that a key of ``[ep]`` and a key of
``[target]`` are validated the same way and their errors read the same: ``section.key = value is invalid:
expected ...``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping


class SchemaError(ValueError):
    """A table does not fit its dataclass; the message names the key (``section.key``)."""


def check(ok: bool, name: str, value: object, valid: str) -> None:
    """Raise a ``SchemaError`` saying that ``name = value`` is invalid and what was expected, unless ``ok``."""
    if not ok:
        raise SchemaError(f"{name} = {value!r} is invalid: expected {valid}")


def convert(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against the type ``hint``; lists become tuples and tables dataclasses where it says so."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise SchemaError(f"{name} = {value!r} is invalid: expected a table")
        return build(hint, value, name)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and item is float:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{name} = {value!r} is invalid: expected a list")
        return tuple(convert(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{name} = {value!r} is invalid: expected a table")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{name} = {value!r} is invalid: expected a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{name} = {value!r} is invalid: expected an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{name} = {value!r} is invalid: expected true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{name} = {value!r} is invalid: expected a string")
        return value
    return value


def build(cls: type, table: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``table``, rejecting unknown keys and values of the wrong type.

    Errors the dataclass raises itself (its ``__post_init__`` checks) propagate unchanged.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(table) - set(names))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise SchemaError(f"unknown key(s) {unknown} in {where}; valid keys: {names}")
    return cls(**{k: convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in table.items()})


def check_number(name: str, value: object, low: float, high: float, *, integer: bool = False,
                 low_open: bool = False) -> float | int:
    """``value`` if it is a finite number (an integer where ``integer``) in ``[low, high]`` (``(low, high]`` with
    ``low_open``); else a ``SchemaError`` naming ``name``, the value and the range.

    The one check behind every number a user gives: config fields and command-line options alike.
    """
    kind = "an integer" if integer else "a finite number"
    show = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
    valid = f"{kind} in {'(' if low_open else '['}{show(low)}, {show(high)}]"
    ok = not isinstance(value, bool) and (isinstance(value, int) if integer else isinstance(value, (int, float)))
    if ok:
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise SchemaError(f"{name} = {value!r} is invalid: expected {valid}")
    return value
