"""The fpga-sim board (the host firmware with RELAX on the Verilated core) as `python -m
firmware_interface.launch fpga-sim` starts it: it speaks the protocol on a pty, and CONFIGURE refuses a
network that the host build holds but the core's memories cannot."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings

import pytest
import serial

from firmware_interface import launch
from tests.firmware_interface.test_firmware import CONFIGURE, NO_MEMORY, OK, Link, network

REPO = launch.FIRMWARE.parents[1]
TOO_BIG_FOR_THE_CORE = network([2000], 4000, max_batch=1)  # 125 groups x 4000 inputs > 65536 words a bank


@pytest.fixture(scope="module")
def launched():
    ok, why = launch.toolchain_available("fpga-sim")
    if not ok:
        pytest.skip(f"fpga-sim board unavailable: {why}")
    launch.build("fpga-sim")
    # the launcher stops on SIGINT: give it the default disposition, whatever an earlier test left in this process
    proc = subprocess.Popen([sys.executable, "-m", "firmware_interface.launch", "fpga-sim"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("/dev/pts/"), url
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # cleanup only: what this module tests ran before the teardown
            proc.kill()
            proc.wait()
            warnings.warn("the fpga-sim launcher did not stop within 30 s of SIGINT; killed it")


def test_launch_serves_the_fpga_sim_board_and_it_refuses_networks_the_core_cannot_hold(launched):
    with serial.Serial(launched, timeout=0.05) as port:
        link = Link(port)
        hello = link.hello()
        assert hello["major"] == 1 and hello["accbits"] == 64
        link.call(CONFIGURE, TOO_BIG_FOR_THE_CORE, expect=NO_MEMORY)
        link.call(CONFIGURE, network([64, 10], 196), expect=OK)
    with launch.HostBoard() as host, serial.Serial(host.url, timeout=0.05) as port:  # its arena holds it
        link = Link(port)
        link.hello()
        link.call(CONFIGURE, TOO_BIG_FOR_THE_CORE, expect=OK)
