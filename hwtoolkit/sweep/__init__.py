"""Robustness studies: train one experiment at several values of one config field, with several seeds.

``hwtoolkit sweep CONFIG --param KEY --values V1,V2,...`` builds one config per value and seed from the raw TOML
exactly like ``--set`` does (``config.apply_overrides(raw, [*sets, "KEY=V", "seed=S"])`` then
``config.from_dict``), so any dotted field can be swept and every value is validated by the config module. All
points are validated before any is trained.

Modules: ``values`` reads ``--values``, ``runner`` builds the points and trains them, ``report`` writes
``sweep.csv`` and ``sweep.json`` (atomically, after every point) and ``sweep.png`` (at the end). The gradient
fidelity measured at every point is ``hwtoolkit.diagnostics.fidelity``.
"""

from .errors import SweepError
from .report import format_table
from .runner import run_sweep

__all__ = ["SweepError", "format_table", "run_sweep"]
