"""Target registry: one table of built-in targets plus the ``hwtoolkit.targets`` entry-point group.

Modelled on python-can's interfaces: the built-in targets are listed here by name (imported on first use);
third-party packages add theirs with an entry point, e.g. in their ``pyproject.toml``::

    [project.entry-points."hwtoolkit.targets"]
    mychip = "mychip.target:MyChipTarget"

and a script or notebook can add one at run time with the ``@targets.register("name")`` decorator.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping, TypeVar

from hwtoolkit.network.spec import NetworkSpec

from .base import RunContext, Target, TargetError

ENTRY_POINT_GROUP = "hwtoolkit.targets"
DEFAULT = "reference"  # the target a config without target.name trains on

# Built-in targets, imported on first use so that opening one does not import the others.
_BUILTIN = {
    "reference": "targets.reference:ReferenceTarget",
    "crossbar": "targets.crossbar.target:CrossbarTarget",
    "serial": "targets.serial.target:SerialTarget",
    "aihwkit": "targets.aihwkit.target:AihwkitTarget",
}
_registered: dict[str, type[Target]] = {}

T = TypeVar("T", bound=type[Target])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a target available under ``name``."""
    def decorate(cls: T) -> T:
        if not issubclass(cls, Target):
            raise TypeError(f"{cls!r} is not a Target subclass")
        cls.name = name
        _registered[name] = cls
        return cls
    return decorate


def _load(path: str) -> type[Target]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every target that can be opened: built-in, registered and installed by entry point."""
    return sorted(set(_BUILTIN) | set(_registered) | set(_entry_points()))


def get(name: str) -> type[Target]:
    """The target class for ``name``, with an error that lists the valid names."""
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        cls = _load(_BUILTIN[name])
    elif name in (eps := _entry_points()):
        cls = eps[name].load()
        if not (isinstance(cls, type) and issubclass(cls, Target)):
            raise TargetError(f"entry point {name!r} in group {ENTRY_POINT_GROUP!r} is not a Target subclass: {cls!r}")
    else:
        raise TargetError(f"unknown target {name!r}; available: {', '.join(available())}")
    if not cls.name:
        cls.name = name
    _registered.setdefault(name, cls)
    return cls


def open(name: str, spec: NetworkSpec, **options: object) -> Target:  # noqa: A001 - mirrors can.Bus / serial_for_url
    """Open target ``name`` for the network ``spec``; ``options`` are the target's own settings."""
    return get(name)(spec, **options)


def open_exact(spec: NetworkSpec, dtype: str = "float64") -> Target:
    """An exact float target for host-side references (the ideal update a device is compared with)."""
    return open(DEFAULT, spec, dtype=dtype)


def configure(name: str, options: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]] | None = None,
              context: RunContext = RunContext()) -> Any:
    """Target ``name``'s typed options from a config's ``[target]`` keys, its own tables and the run's context.

    Raises ``TargetError`` naming the key at fault, or saying that the target cannot run the ``[quant]``
    network; ``get(name)(spec, options)`` then opens it.
    """
    cls = get(name)
    cls.check_quant(context.quant)
    return cls.configure(options, tables, context)


def table_owners(table: str) -> list[str]:
    """The targets that read the config table ``[table]``."""
    return [name for name in available() if table in get(name).tables]
