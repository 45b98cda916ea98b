"""Build and start the reference firmware (firmware_interface/firmware/) and hand back its pyserial URL.

``HostBoard`` runs the firmware as a host process on a pseudo-terminal or loopback TCP (``rtl=True``: the
fpga-sim build, whose RELAX runs on the Verilated RTL core of firmware_interface/fpga/); ``QemuBoard`` runs
the Cortex-M3 image in ``qemu-system-arm -M mps2-an385``. Both build what is missing or stale with ``make``.
``python -m firmware_interface.launch host|fpga-sim|qemu [--tcp]`` starts one and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parent / "firmware"
TARGETS = {
    "host": FIRMWARE / "build/host/ep_board",
    "host-asan": FIRMWARE / "build/host-asan/ep_board",
    "host-v10": FIRMWARE / "build/host-v10/ep_board",  # protocol 1.0: no packed commands (compatibility tests)
    "qemu": FIRMWARE / "build/qemu/ep_board.elf",
    "fuzz": FIRMWARE / "build/fuzz/fuzz_frames",
    "fpga-sim": FIRMWARE / "build/fpga-sim/ep_board",
}
TOOLS = {"host": ["make", "gcc"], "host-asan": ["make", "gcc"], "host-v10": ["make", "gcc"],
         "qemu": ["make", "arm-none-eabi-gcc", "qemu-system-arm"],
         "fuzz": ["make", "clang"], "fpga-sim": ["make", "gcc", "g++", "verilator"]}
BOOT_SEED_ADDR = 0x203FFFF0  # the M3 image mixes this word into its boot_id (see m3/mps2_an385.ld)


class FirmwareError(RuntimeError):
    """The firmware could not be built or did not start."""


def toolchain_available(target: str) -> tuple[bool, str]:
    """Whether ``target`` can be built and run here, and if not, why (for ``pytest.skip``)."""
    if target not in TARGETS:
        return False, f"unknown target {target!r}; valid: {sorted(TARGETS)}"
    missing = [tool for tool in TOOLS[target] if shutil.which(tool) is None]
    if missing and not TARGETS[target].exists():
        return False, f"{', '.join(missing)} not found on PATH (needed to build/run the {target} firmware)"
    if target == "qemu" and shutil.which("qemu-system-arm") is None:
        return False, "qemu-system-arm not found on PATH"
    return True, ""


def _sources(target: str) -> list[Path]:
    fpga = FIRMWARE.parent / "fpga"
    extra = list((fpga / "rtl").glob("*.v")) + list((fpga / "sim").glob("*.[ch]*")) if target == "fpga-sim" else []
    return [p for d in ("src", "host", "m3", "fuzz") for p in (FIRMWARE / d).glob("*.[chl]*")] + [FIRMWARE / "Makefile"] \
        + extra


def build(target: str) -> Path:
    """The path of ``target``'s binary, running ``make`` first if it is missing or older than the sources."""
    ok, reason = toolchain_available(target)
    if not ok:
        raise FirmwareError(reason)
    binary = TARGETS[target]
    newest = max(p.stat().st_mtime for p in _sources(target))
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    (FIRMWARE / "build").mkdir(exist_ok=True)
    with open(FIRMWARE / "build/.lock", "w") as lock:  # parallel test workers build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(["make", "-s", "-C", str(FIRMWARE), target], capture_output=True, text=True)
    if done.returncode != 0 or not binary.exists():
        raise FirmwareError(f"make {target} failed:\n{done.stdout}{done.stderr}")
    return binary


class _Board:
    """A started firmware process and the URL to reach it; a context manager that stops it."""

    url: str
    process: subprocess.Popen

    def _start(self, argv: list[str], pattern: str, timeout: float, env: dict | None = None) -> re.Match:
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env)
        self.output: list[str] = []
        sel = selectors.DefaultSelector()
        sel.register(self.process.stdout, selectors.EVENT_READ)
        deadline, line = time.monotonic() + timeout, b""
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                chunk = os.read(self.process.stdout.fileno(), 1)
                if not chunk:
                    break
                line += chunk
                if chunk == b"\n":
                    self.output.append(line.decode(errors="replace"))
                    match = re.search(pattern, self.output[-1])
                    if match:
                        sel.close()
                        threading.Thread(target=self._drain, daemon=True).start()
                        return match
                    line = b""
        sel.close()
        self.kill()
        raise FirmwareError(f"{argv[0]} did not announce its port within {timeout} s: {''.join(self.output)}"
                            f"{line.decode(errors='replace')}")

    def _drain(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            self.output.append(raw.decode(errors="replace"))

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the board dies at once, like a pulled plug."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HostBoard(_Board):
    """The firmware as a host process: ``url`` is a pty path (``/dev/pts/N``) or ``socket://127.0.0.1:PORT``.

    ``legacy``: the protocol 1.0 build (``-DEP_NO_PACKED``), a board without the packed commands.
    """

    def __init__(self, arena: int | None = None, device_id: int = 0, max_batch: int | None = None,
                 transport: str = "pty", sanitizers: bool = False, timeout: float = 10.0, rtl: bool = False,
                 legacy: bool = False) -> None:
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport = {transport!r}; valid: 'pty', 'tcp'")
        if rtl and sanitizers:
            raise ValueError("the fpga-sim build (rtl=True) has no sanitizer variant")
        if legacy and (rtl or sanitizers):
            raise ValueError("the protocol 1.0 build (legacy=True) has no fpga-sim or sanitizer variant")
        argv = [str(build("fpga-sim" if rtl else "host-asan" if sanitizers else "host-v10" if legacy else "host"))]
        argv += ["--pty"] if transport == "pty" else ["--tcp", "0"]
        argv += ["--device-id", str(device_id)]
        if arena is not None:
            argv += ["--arena", str(arena)]
        if max_batch is not None:
            argv += ["--max-batch", str(max_batch)]
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1") if sanitizers else None
        match = self._start(argv, r"^(PTY (\S+)|TCP (\S+))\s*$", timeout, env)
        self.url = match.group(2) if transport == "pty" else f"socket://{match.group(3)}"


class QemuBoard(_Board):
    """The Cortex-M3 image in QEMU (mps2-an385, UART0): ``url`` is a pty path or ``socket://127.0.0.1:PORT``.

    ``seed`` (random by default) is written into RAM by QEMU's generic loader so that boot_ids differ
    between QEMU processes; resets inside one process change it through a counter kept in RAM.
    """

    def __init__(self, transport: str = "pty", seed: int | None = None, timeout: float = 10.0) -> None:
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport = {transport!r}; valid: 'pty', 'tcp'")
        seed = random.getrandbits(32) if seed is None else seed
        argv = ["qemu-system-arm", "-M", "mps2-an385", "-nographic", "-monitor", "none",
                "-kernel", str(build("qemu")),
                "-device", f"loader,addr=0x{BOOT_SEED_ADDR:08x},data=0x{seed:08x},data-len=4"]
        if transport == "pty":
            argv += ["-serial", "pty"]
            match = self._start(argv, r"char device redirected to (/dev/pts/\d+)", timeout)
            self.url = match.group(1)
        else:
            port = _free_port()
            argv += ["-serial", f"tcp:127.0.0.1:{port},server=on,wait=off,nodelay=on"]
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
            self.output = []
            threading.Thread(target=self._drain, daemon=True).start()
            _wait_listening(port, timeout, self.process)
            self.url = f"socket://127.0.0.1:{port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float, process: subprocess.Popen) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return  # QEMU serves one client at a time; this probe disconnects at once
        time.sleep(0.02)
    raise FirmwareError(f"QEMU did not listen on 127.0.0.1:{port} within {timeout} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m firmware_interface.launch",
                                     description="Start the reference firmware and print its serial URL.")
    parser.add_argument("target", choices=["host", "fpga-sim", "qemu"],
                        help="fpga-sim: the host build with RELAX on the Verilated RTL core")
    parser.add_argument("--tcp", action="store_true", help="loopback TCP instead of a pseudo-terminal")
    parser.add_argument("--arena", type=int, help="arena bytes (host only)")
    parser.add_argument("--device-id", type=int, default=0, help="device id (host only)")
    parser.add_argument("--sanitizers", action="store_true", help="the ASan/UBSan build (host only)")
    args = parser.parse_args(argv)
    transport = "tcp" if args.tcp else "pty"
    board = (QemuBoard(transport) if args.target == "qemu" else
             HostBoard(args.arena, args.device_id, transport=transport, sanitizers=args.sanitizers,
                       rtl=args.target == "fpga-sim"))
    with board:
        print(board.url, flush=True)
        print(f"serving; use --set target.url={board.url}; Ctrl-C stops", flush=True)
        try:
            board.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
