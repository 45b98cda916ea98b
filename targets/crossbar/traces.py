"""Pulse-response traces: single pulses of given directions through many devices, one conductance row per pulse.

The crossbar's side of aihwkit's pulse-response protocol (``aihwkit.utils.visualization.compute_pulse_response``):
every device gets one pulse per step, all in the step's direction, and the conductance each read sees after it is
recorded. Used by the conformance suite against aihwkit and by ``benchmarks/aihwkit_golden.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from .config import TileConfig
from .devices import PairArray


def pulse_directions(kind: str, steps: int, n: int = 0, seed: int = 0) -> np.ndarray:
    """A direction per step (+1 up, -1 down): ``"updown"`` (n up, n down, repeated: aihwkit's protocol),
    ``"random"`` (independent +-1), ``"up"`` or ``"down"`` (one direction, into a bound)."""
    if kind == "updown":
        return np.sign(np.sin(np.pi * (np.arange(steps) + 0.5) / n)).astype(np.int64)
    if kind == "random":
        return np.random.default_rng(seed).choice(np.array([-1, 1]), size=steps)
    if kind in ("up", "down"):
        return np.full(steps, 1 if kind == "up" else -1, dtype=np.int64)
    raise ValueError(f"pulse direction kind {kind!r}: expected 'updown', 'random', 'up' or 'down'")


class PulseDevices:
    """``n`` devices of one configuration (one polarity of a differential array), pulsed one pulse at a time."""

    def __init__(self, cfg: TileConfig, n: int, seed: int = 0, start: float | str = "lo") -> None:
        write = dataclasses.replace(cfg.write, pulse_mode="count", pair="differential", max_pulses=0)
        self.cfg = dataclasses.replace(cfg, write=write)
        gen = torch.Generator().manual_seed(seed)
        self.gen = gen
        self.array = PairArray(self.cfg, (n,), gen, torch.device("cpu"), torch.float64, scale=1.0)
        dev = self.array.pos
        lo, hi = (torch.as_tensor(v, dtype=torch.float64).expand(n) for v in (dev.lo, dev.hi))
        g = lo.clone() if start == "lo" else hi.clone() if start == "hi" else torch.full((n,), float(start))
        dev.g = PairArray._clip(dev, g.to(torch.float64))
        self.n = n

    def pulse(self, direction: int) -> None:
        """One pulse on every device, up for ``direction`` > 0."""
        dw = self.cfg.device.dw_min
        delta = torch.full((self.n,), 2.0 * dw * (1 if direction > 0 else -1), dtype=torch.float64)
        self.array.write(delta, self.gen, 0.0)

    def conductance(self, now: float = 0.0) -> np.ndarray:
        """What a read sees at simulated time ``now`` (hidden conductance, write noise, drift since the pulses,
        which are written at time 0), normalized to the nominal range [0, 1]."""
        return self.array.visible(self.array.pos, now).numpy().copy()

    def trace(self, directions: Sequence[int]) -> np.ndarray:
        """The conductance after each pulse of ``directions``: shape (len(directions), n)."""
        out = np.empty((len(directions), self.n))
        for i, d in enumerate(directions):
            self.pulse(int(d))
            out[i] = self.conductance()
        return out

    def symmetry_points(self) -> np.ndarray | None:
        """Each device's symmetry point (normalized), or None for a model without one."""
        sp = self.array.symmetry_points()[0]
        return None if sp is None else torch.as_tensor(sp).expand(self.n).numpy()
