"""cocotb testbench of ep_spi_top: the vectors of tb_core.py replayed through the SPI slave (mode 0)."""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Timer

from tests.fpga.tb_core import CTRL, replay_vectors

STATUS = 1
HALF = 40  # ns: SCLK = clk / 8


class SpiBus:
    """Bus accesses as 64-bit SPI transfers; a read's word comes back during the next transfer."""

    def __init__(self, dut) -> None:
        self.dut = dut

    async def transfer(self, word: int) -> int:
        dut, got = self.dut, 0
        dut.cs_n.value = 0
        await Timer(2 * HALF, unit="ns")
        for i in range(63, -1, -1):
            dut.mosi.value = (word >> i) & 1
            await Timer(HALF, unit="ns")
            dut.sclk.value = 1
            if i >= 32:
                got = got << 1 | int(dut.miso.value)
            await Timer(HALF, unit="ns")
            dut.sclk.value = 0
        await Timer(2 * HALF, unit="ns")
        dut.cs_n.value = 1
        await Timer(4 * HALF, unit="ns")
        return got

    async def write(self, address: int, value: int) -> None:
        await self.transfer(1 << 63 | address << 32 | value)

    async def read(self, address: int) -> int:
        await self.transfer(address << 32)
        return await self.transfer(address << 32)

    async def run(self, limit: int) -> None:
        await self.write(CTRL, 1)
        for _ in range(limit // 100 + 10):
            if await self.read(STATUS) & 2:
                return
            await Timer(1000, unit="ns")
        raise TimeoutError(f"the core did not finish within {limit} cycles")


@cocotb.test()
async def replay_spi(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.cs_n.value = 1
    dut.sclk.value = 0
    dut.mosi.value = 0
    await Timer(200, unit="ns")
    await replay_vectors(dut, SpiBus(dut))
