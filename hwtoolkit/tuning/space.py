"""Search spaces: ``KEY=log(LOW, HIGH)``, ``KEY=uniform(LOW, HIGH)``, ``KEY=int(LOW, HIGH)``, ``KEY=choice(A, B, ...)``.

``KEY`` is a dotted config field as for ``--set``, or one entry of a list field, ``optim.lr[1]`` (per-layer
learning rates: the other entries keep the config's values). Bounds are finite numbers with ``LOW < HIGH`` (and
``LOW > 0`` for ``log``); ``choice`` values are read as TOML like ``--values`` (a bare word is a string).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from hwtoolkit import config as config_mod

KINDS = ("log", "uniform", "int", "choice")
_SPACE = re.compile(r"^\s*(?P<kind>[a-z]+)\s*\((?P<args>.*)\)\s*$", re.S)
_KEY = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*)(?:\[(?P<index>\d+)\])?$")


class TuneError(ValueError):
    """A tuning study cannot be run as asked (a bad search space, an unknown key, another study's directory)."""


@dataclass(frozen=True)
class SearchSpace:
    """One searched field: its key (``field`` and list ``index``), the kind of space and its bounds or choices."""

    text: str
    field: str
    index: int | None
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        """The parameter's name in the study: the key as written, ``optim.lr[1]``."""
        return self.field if self.index is None else f"{self.field}[{self.index}]"


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TuneError(f"{where}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise TuneError(f"{where}: {text.strip()!r} is not a finite number")
    return value


def parse_search(text: str) -> SearchSpace:
    """``KEY=SPACE`` -> a ``SearchSpace``; anything malformed raises a ``TuneError`` naming the option."""
    where = f"--search {text!r}"
    key, sep, space = text.partition("=")
    key = key.strip()
    match = _KEY.match(key)
    if not sep or not match:
        raise TuneError(f"{where}: expected KEY=SPACE, e.g. optim.lr[0]=log(1e-3, 0.3)")
    m = _SPACE.match(space)
    if not m or m.group("kind") not in KINDS:
        raise TuneError(f"{where}: expected a space {', '.join(k + '(...)' for k in KINDS)}, "
                        f"e.g. log(1e-3, 0.3) or choice(0.1, 0.2)")
    kind, args = m.group("kind"), m.group("args")
    index = int(match.group("index")) if match.group("index") is not None else None
    if kind == "choice":
        from hwtoolkit.sweep.values import parse_values
        from hwtoolkit.sweep.errors import SweepError

        try:
            choices = tuple(v.value for v in parse_values(key, args))
        except (SweepError, config_mod.ConfigError) as e:
            raise TuneError(f"{where}: {e}") from None
        if len(set(map(repr, choices))) != len(choices):
            raise TuneError(f"{where}: a choice is given twice")
        return SearchSpace(text, match.group("field"), index, kind, choices=choices)
    bounds = args.split(",")
    if len(bounds) != 2:
        raise TuneError(f"{where}: {kind}(LOW, HIGH) takes two bounds")
    low, high = (_number(b, where) for b in bounds)
    if not low < high:
        raise TuneError(f"{where}: LOW {low:g} must be below HIGH {high:g}")
    if kind == "log" and low <= 0:
        raise TuneError(f"{where}: log(LOW, HIGH) needs LOW > 0")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise TuneError(f"{where}: int(LOW, HIGH) takes integer bounds")
    return SearchSpace(text, match.group("field"), index, kind, low, high)


def sample(trial: Any, space: SearchSpace) -> Any:
    """Draw the space's value for an Optuna trial."""
    if space.kind == "log":
        return trial.suggest_float(space.name, space.low, space.high, log=True)
    if space.kind == "uniform":
        return trial.suggest_float(space.name, space.low, space.high)
    if space.kind == "int":
        return trial.suggest_int(space.name, int(space.low), int(space.high))
    return trial.suggest_categorical(space.name, list(space.choices)) if all(
        isinstance(c, (str, int, float, bool)) for c in space.choices) else space.choices[
        trial.suggest_categorical(space.name, list(range(len(space.choices))))]


def contains(space: SearchSpace, value: Any) -> bool:
    """Whether ``value`` (the base config's) lies in the space, so that it can be the study's first trial."""
    if space.kind == "choice":
        return value in space.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return space.low <= value <= space.high and (space.kind != "int" or value == int(value))


def _get(table: dict[str, Any], field: str) -> Any:
    node: Any = table
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def overrides(base: config_mod.Config, spaces: list[SearchSpace], values: dict[str, Any]) -> list[str]:
    """``--set`` texts giving every searched field its value; list entries merged into the config's list."""
    import tomli_w

    def toml(value: Any) -> str:
        return tomli_w.dumps({"v": value}).partition("=")[2].strip()

    current = base.to_dict()
    lists: dict[str, list[Any]] = {}
    out = []
    for space in spaces:
        value = values[space.name]
        if space.index is None:
            out.append(f"{space.field}={toml(value)}")
            continue
        if space.field not in lists:
            lists[space.field] = list(base_list(base, space.field, current))
        lists[space.field][space.index] = value
    out += [f"{field}={toml(items)}" for field, items in lists.items()]
    return out


def base_list(base: config_mod.Config, field: str, current: dict[str, Any] | None = None) -> list[Any]:
    """The config's list at ``field``; ``optim.lr`` with one value is spread over every weight layer first."""
    if field == "optim.lr":
        return list(base.layer_lrs())
    value = _get(current if current is not None else base.to_dict(), field)
    return list(value) if isinstance(value, (list, tuple)) else []


def base_value(base: config_mod.Config, space: SearchSpace) -> Any:
    """The config's own value of a searched field (None where it has none)."""
    if space.index is None:
        if space.field == "optim.lr" and len(set(lrs := base_list(base, space.field))) == 1:
            return lrs[0]  # one rate for every layer is what a searched scalar optim.lr sets
        value = _get(base.to_dict(), space.field)
        return list(value) if isinstance(value, tuple) else value
    items = base_list(base, space.field)
    return items[space.index] if space.index < len(items) else None


def check_spaces(base: config_mod.Config, spaces: list[SearchSpace]) -> None:
    """Every searched key exists and every bound gives a valid config (an unknown key fails here, by name)."""
    names = [s.name for s in spaces]
    for space in spaces:
        if names.count(space.name) > 1:
            raise TuneError(f"--search {space.name}: searched twice")
        if space.index is not None:
            items = base_list(base, space.field)
            if space.index >= len(items):
                raise TuneError(f"--search {space.text!r}: {space.field} has {len(items)} entries (index "
                                f"{space.index} is out of range)")
        if space.index is None and any(s.index is not None and s.field == space.field for s in spaces):
            raise TuneError(f"--search {space.field}: searched both whole and by entry")
    probes = [{s.name: s.low if s.kind != "choice" else s.choices[0] for s in spaces},
              {s.name: s.high if s.kind != "choice" else s.choices[-1] for s in spaces}]
    for probe in probes:
        probe = {k: int(v) if s.kind == "int" else v for s in spaces for k, v in probe.items() if k == s.name}
        try:
            config_mod.loads(base.to_toml(), overrides(base, spaces, probe))
        except config_mod.ConfigError as e:
            raise TuneError(f"--search: {e}") from None
