"""Shared fixtures: a small, learnable data set in real IDX files, and configs that train on it."""

import os
from pathlib import Path

import numpy as np
import pytest

from hwtoolkit import config
from hwtoolkit.data import write_idx

os.environ.setdefault("HWTOOLKIT_NO_TRACK", "1")  # commands log to MLflow only where a test asks for it

CLASSES, SIDE = 4, 8


def make_idx_dataset(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Four classes of 8x8 images: a fixed random binary prototype per class plus uniform noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, size=(CLASSES, SIDE, SIDE))
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, CLASSES, size=n).astype(np.uint8)
        images = np.clip(prototypes[labels] * 150 + rng.integers(0, 105, size=(n, SIDE, SIDE)), 0, 255)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def idx_dataset(tmp_path_factory) -> Path:
    return make_idx_dataset(tmp_path_factory.mktemp("tiny_idx"))


def tiny_config_text(root: Path, estimator: str = "symmetric", epochs: int = 3, extra: str = "") -> str:
    return f"""
name = "tiny"
seed = 3
estimator = "{estimator}"
[data]
dataset = "idx"
root = "{root}"
val_size = 100
[network]
input_shape = [1, {SIDE}, {SIDE}]
hidden = [16]
classes = {CLASSES}
output = "ce"
[ep]
beta = 0.5
free_steps = 8
nudged_steps = 6
[optim]
lr = [0.1, 0.05]
momentum = 0.9
weight_decay = 1e-4
[train]
epochs = {epochs}
batch_size = 25
checkpoint_every = 4
{extra}
"""


@pytest.fixture
def tiny_config(idx_dataset):
    return config.loads(tiny_config_text(idx_dataset))


# -- boards: the host-built firmware, the QEMU Cortex-M3 build, and a real board given with --board-url ----------


def pytest_addoption(parser):
    parser.addoption("--board-url", default=None,
                     help="pyserial URL of a real board running the reference firmware (enables hardware tests)")


@pytest.fixture(scope="session")
def host_board():
    """The host build of the reference firmware, serving a pty for the whole session."""
    from firmware_interface import launch

    ok, why = launch.toolchain_available("host")
    if not ok:
        pytest.skip(f"host firmware cannot be built: {why}")
    with launch.HostBoard() as board:
        yield board


@pytest.fixture(scope="session")
def qemu_board():
    """The Cortex-M3 build of the reference firmware on QEMU's mps2-an385, serving a pty."""
    from firmware_interface import launch

    ok, why = launch.toolchain_available("qemu")
    if not ok:
        pytest.skip(f"QEMU board unavailable: {why}")
    with launch.QemuBoard() as board:
        yield board


@pytest.fixture(scope="session")
def fpga_sim_board():
    """The fpga-sim build: the host firmware with RELAX on the Verilated RTL core (firmware_interface/fpga/)."""
    from firmware_interface import launch

    ok, why = launch.toolchain_available("fpga-sim")
    if not ok:
        pytest.skip(f"fpga-sim board unavailable: {why}")
    with launch.HostBoard(rtl=True) as board:
        yield board


@pytest.fixture(scope="session", params=["host", "qemu", "fpga-sim",
                                         pytest.param("hardware", marks=pytest.mark.hardware)])
def board_url(request):
    """The URL of each kind of board: host build, QEMU, fpga-sim, and a real one (only with --board-url)."""
    if request.param == "host":
        return request.getfixturevalue("host_board").url
    if request.param == "fpga-sim":
        return request.getfixturevalue("fpga_sim_board").url
    if request.param == "qemu":
        return request.getfixturevalue("qemu_board").url
    url = request.config.getoption("--board-url")
    if not url:
        pytest.skip("no real board: pass --board-url URL to run the hardware tests")
    return url


@pytest.fixture(scope="module")
def host_client(host_board):
    """A client on the host build, with a short timeout."""
    from firmware_interface.client import BoardClient

    with BoardClient.open(host_board.url, timeout=0.5) as client:
        yield client


@pytest.fixture(scope="module")
def board_client(board_url):
    """A client on each kind of board: host build, QEMU, fpga-sim, and a real one given with --board-url."""
    from firmware_interface.client import BoardClient

    with BoardClient.open(board_url, timeout=2.0) as client:
        yield client


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch CPU thread for a module: its arrays are small enough that OpenMP start-up dominates (and, on a
    loaded machine, spin-waiting threads can make each elementwise op ~100x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
