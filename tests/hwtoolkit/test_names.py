"""Lists of names that several modules keep: each copy must list the same names as its source."""

from __future__ import annotations

import argparse

from hwtoolkit import config
from hwtoolkit.cli import build_parser
from hwtoolkit.diagnostics import gdu
from hwtoolkit.diagnostics.fidelity import COSINES, FIGURES
from hwtoolkit.network.flops import NUDGED_PHASES
from hwtoolkit.plots import COSINE_LABELS
from hwtoolkit.sweep.report import HEADERS
from hwtoolkit.training import estimators, optimizer
from quantize.export import FORMATS


def _choices(command: str, option: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return list(action.choices)


def test_schedules_are_the_optimizers() -> None:
    assert config.SCHEDULES == tuple(optimizer.SCHEDULES)


def test_estimators_are_the_same_everywhere() -> None:
    assert config.ESTIMATORS == tuple(estimators.ESTIMATORS)
    assert set(NUDGED_PHASES) == set(config.ESTIMATORS) - {"bptt"}  # bptt has no analytic FLOP count
    assert set(gdu.ESTIMATORS) <= set(config.ESTIMATORS)
    assert _choices("gdu", "--estimator") == [*gdu.ESTIMATORS, "both"]


def test_export_formats_are_the_exporters() -> None:
    assert _choices("export", "--format") == list(FORMATS)


def test_every_fidelity_cosine_has_a_plot_label_and_a_table_header() -> None:
    assert set(COSINE_LABELS) == set(COSINES) and set(HEADERS) == set(FIGURES)
