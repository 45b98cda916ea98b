"""The swept values: ``--values`` text split and read as TOML, their labels and point directory names.

``--values`` is split on the commas that are outside brackets (``[]``, ``{}``) and quotes (``"..."``,
``'...'``); each piece, stripped of surrounding blanks, is read as a TOML value like a ``--set`` value, and a
piece that is not valid TOML is taken as a bare string. So ``0,0.1,1e-3`` are numbers, ``ideal,reram-exp`` and
``'"ideal","reram-exp"'`` are strings, ``'[0.1,0.05],[0.2,0.1]'`` are two lists and ``'"a,b",c'`` is ``"a,b"``
and ``"c"``. A string that looks like a number needs TOML quotes: ``'"1"'``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from hwtoolkit import config as config_mod

from .errors import SweepError


@dataclass(frozen=True)
class SweepValue:
    """One value of the swept field: the text as given, the value it parses to, and its label."""

    text: str
    value: Any
    label: str


def split_values(text: str) -> list[str]:
    """Split ``text`` on the commas outside brackets and quotes; every piece stripped and non-empty."""
    pieces: list[str] = []
    current: list[str] = []
    closing = {"[": "]", "{": "}"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote is not None:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch == "," and not stack:
            pieces.append("".join(current))
            current = []
            continue
        current.append(ch)
        if ch in "\"'":
            quote = ch
        elif ch in closing:
            stack.append(closing[ch])
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                raise SweepError(f"--values {text!r}: unbalanced {ch!r}")
    if quote is not None:
        raise SweepError(f"--values {text!r}: unterminated {quote} quote")
    if stack:
        raise SweepError(f"--values {text!r}: unclosed bracket, expected {stack[-1]!r}")
    pieces.append("".join(current))
    pieces = [p.strip() for p in pieces]
    if any(not p for p in pieces):
        raise SweepError(f"--values {text!r}: empty value (two commas in a row, or a leading or trailing comma)")
    return pieces


def value_label(value: Any) -> str:
    """A short text for a parsed value: bare for a top-level string, TOML-like otherwise."""
    if isinstance(value, str):
        return value
    return _inner_label(value)


def _inner_label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_inner_label(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_inner_label(v)}" for k, v in value.items()) + "}"
    return str(value)  # dates and times from TOML


def parse_values(key: str, text: str) -> list[SweepValue]:
    """``--values`` text -> the values, each read as TOML like a ``--set`` value (see the module docstring)."""
    values = []
    for piece in split_values(text):
        _, value = config_mod.parse_override(f"{key}={piece}")
        values.append(SweepValue(piece, value, value_label(value)))
    return values


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]")


def safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits and ``._=+,-`` replaced by ``_``."""
    return _UNSAFE.sub("_", text)


def point_dirname(key: str, label: str) -> str:
    """``KEY=LABEL`` as a file name: other characters become ``_``, and then a hash of the label keeps it unique."""
    name = f"{key}={label}"
    safe = safe_name(name)
    if safe != name or len(safe) > 100:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def is_numeric(values: Sequence[Any]) -> bool:
    """Whether the values go on a numeric axis (numbers, not booleans); otherwise they are categories."""
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
