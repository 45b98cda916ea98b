"""The bad-input probe's cases (benchmarks/bad_inputs.py), run in process: each a one-line error, status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bad_inputs import CASES, arguments, workspace
from hwtoolkit.cli import main


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("probe"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_one_line_error(case, ws, capsys, monkeypatch):
    monkeypatch.chdir(ws["tmp"])
    before = sorted(p for p in Path(ws["run"]).rglob("*"))
    capsys.readouterr()
    assert main(arguments(case, ws)) == case.expect
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwtoolkit ") and "Traceback" not in err[0], err
    assert sorted(Path(ws["run"]).rglob("*")) == before  # the trained run is untouched
