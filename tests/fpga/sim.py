"""Runs the core's cocotb testbench (tests/fpga/tb_core.py) on Icarus Verilog over a list of cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from firmware_interface.fpga.layout import CoreParams

REPO = Path(__file__).resolve().parents[2]
RTL = REPO / "firmware_interface/fpga/rtl"
SOURCES = [RTL / "ep_ram.v", RTL / "ep_wram.v", RTL / "ep_relax_core.v", RTL / "ep_spi_top.v"]


def simulator_missing() -> str | None:
    """Why the RTL tests cannot run here, or None."""
    missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH (Debian package iverilog; `make test` installs it)"
    try:
        import cocotb_tools.runner  # noqa: F401
    except ImportError:
        return "cocotb is not installed (pip install -e '.[test]')"
    return None


def simulate(params: CoreParams, cases: list[dict], work: Path, top: str = "ep_relax_core") -> list[list[dict]]:
    """Each case's phases as ``top`` (the core, or ep_spi_top) answered them (tb_core.py: the vector format)."""
    from cocotb_tools.runner import get_results, get_runner

    work.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([top, params.verilog()], sort_keys=True).encode()
                         + b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:12]
    build = REPO / "build/fpga/sim" / key
    runner = get_runner("icarus")
    runner.build(sources=SOURCES, hdl_toplevel=top, parameters=params.verilog(), build_dir=build,
                 timescale=("1ns", "1ps"), log_file=work / "build.log")
    vectors, results = work / "vectors.json", work / "results.json"
    vectors.write_text(json.dumps({"cases": cases}))
    env = {"VECTORS": str(vectors), "RESULTS": str(results),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    module = "tests.fpga.tb_spi" if top == "ep_spi_top" else "tests.fpga.tb_core"
    xml = runner.test(test_module=module, hdl_toplevel=top, build_dir=build,
                      test_dir=work, extra_env=env, log_file=work / "sim.log")
    total, failed = get_results(xml)
    if failed or not results.exists():
        raise AssertionError(f"the testbench failed ({failed} of {total}); see {work / 'sim.log'}:\n"
                             + (work / "sim.log").read_text()[-3000:])
    return json.loads(results.read_text())
