"""cocotb testbench of ep_relax_core: replays the bus writes of a vector file (VECTORS) and records what the
core answers (states, MAX_DELTA, CYCLES) in RESULTS; tests/fpga/test_core.py builds the vectors and judges."""

from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

STATUS, MAX_DELTA, CYCLES = 1, 8, 9
CTRL = 0


class Bus:
    """The core's register bus, driven and sampled on falling clock edges."""

    def __init__(self, dut) -> None:
        self.dut = dut

    async def write(self, address: int, value: int) -> None:
        dut = self.dut
        dut.addr.value = address
        dut.wdata.value = value
        dut.we.value = 1
        await FallingEdge(dut.clk)
        dut.we.value = 0

    async def read(self, address: int) -> int:
        dut = self.dut
        dut.addr.value = address
        dut.re.value = 1
        await FallingEdge(dut.clk)
        dut.re.value = 0
        return int(dut.rdata.value)

    async def run(self, limit: int) -> None:
        """Start a phase and wait until done (at most ``limit`` cycles)."""
        await self.write(CTRL, 1)
        for _ in range(limit):
            if int(self.dut.done.value):
                return
            await FallingEdge(self.dut.clk)
        raise TimeoutError(f"the core did not finish within {limit} cycles")


@cocotb.test()
async def replay(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.we.value = 0
    dut.re.value = 0
    dut.addr.value = 0
    dut.wdata.value = 0
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await replay_vectors(dut, Bus(dut))


async def replay_vectors(dut, bus) -> None:
    """Every case of VECTORS through ``bus`` (``write``, ``read``, ``run``); the answers into RESULTS."""
    with open(os.environ["VECTORS"]) as f:
        vectors = json.load(f)
    results = []
    for case in vectors["cases"]:
        out = []
        for a, v in case["writes"]:
            await bus.write(a, v)
        for phase in case["phases"]:
            for a, v in phase["writes"]:
                await bus.write(a, v)
            await bus.run(phase["limit"])
            states = [await bus.read(a) for a in phase["read"]]
            out.append({"states": states, "max_delta": await bus.read(MAX_DELTA),
                        "cycles": await bus.read(CYCLES), "busy": await bus.read(STATUS) & 1})
        results.append(out)
    with open(os.environ["RESULTS"], "w") as f:
        json.dump(results, f)
    await RisingEdge(dut.clk)
