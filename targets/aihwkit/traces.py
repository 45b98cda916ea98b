"""aihwkit's side of the pulse-response protocol: single pulses through an aihwkit tile of ``n`` devices.

``aihwkit_trace`` runs ``aihwkit.utils.visualization.compute_pulse_response`` (aihwkit's own protocol: every device
of a 1-input tile gets one pulse per step, in the step's direction) on a tile set up as aihwkit's
``get_tile_for_plotting`` does (single pulses: no update management, bit length 1), and returns the weights in
aihwkit's units. The crossbar's counterpart is ``targets.crossbar.traces``.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch


def aihwkit_tile(device: Any, n: int, seed: int = 0, w_init: float | str = "w_min") -> Any:
    """An aihwkit ``AnalogTile`` of ``n`` devices (``n`` outputs, 1 input) of ``device``, set to ``w_init``
    (``"w_min"``, ``"w_max"`` or a weight), its device-to-device draws seeded by ``seed``.

    aihwkit 1.2 seeds its pulse noise from the clock (its C++ ``setRandomSeed`` has no Python binding), so
    cycle-to-cycle noise is a fresh draw at every call; everything else is reproducible."""
    from aihwkit.simulator.configs import SingleRPUConfig
    from aihwkit.simulator.tiles import AnalogTile

    device = copy.deepcopy(device)
    device.construction_seed = 1000 + seed  # the device-to-device draws
    config = SingleRPUConfig(device=device)
    config.update.update_bl_management = False
    config.update.update_management = False
    config.update.desired_bl = 1
    config.forward.is_perfect = True
    torch.manual_seed(seed)  # whatever aihwkit draws through torch
    tile = AnalogTile(n, 1, config)
    tile.set_learning_rate(1)
    if isinstance(w_init, str):
        w_init = getattr(device, w_init)
    tile.set_weights(torch.full((n, 1), float(w_init)))
    return tile


def aihwkit_trace(device: Any, directions: Sequence[int], n: int, seed: int = 0,
                  w_init: float | str = "w_min") -> np.ndarray:
    """The weight of each of ``n`` devices after each pulse of ``directions`` (+1 up): shape (steps, n)."""
    from aihwkit.utils.visualization import compute_pulse_response

    tile = aihwkit_tile(device, n, seed, w_init)
    return compute_pulse_response(tile, np.asarray(directions, dtype=np.float64))[:, :, 0]


def aihwkit_bounds(device: Any, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each device's (lower, upper) bound as drawn by aihwkit: the weights after long runs into each bound."""
    steps = int(np.ceil(20 * (device.w_max - device.w_min) / device.dw_min))
    lo = aihwkit_trace(device, -np.ones(steps, dtype=np.int64), n, seed, w_init="w_max")[-1]
    hi = aihwkit_trace(device, np.ones(steps, dtype=np.int64), n, seed, w_init="w_min")[-1]
    return lo, hi
