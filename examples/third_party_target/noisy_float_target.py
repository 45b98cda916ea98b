"""A third-party hwtoolkit target in one file: float weights read through a noisy analog read path.

Every array read (``W s`` going up, ``W^T s`` coming down) gets independent Gaussian noise of std
``read_noise`` per output, the way an analog crossbar's readout does; updates are written scaled by
``update_gain`` (a write path that over- or under-shoots). With both at their defaults the target computes
exactly what the reference target computes. See README.md beside this file for how to adapt it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hwtoolkit.network import dynamics, layers
from hwtoolkit.network.dynamics import Relaxation
from targets import Capabilities, Start, Target, TargetError, Update, UpdateReport
from targets.base import start_states


@dataclass(frozen=True)
class NoisyFloatOptions:
    """The ``[target]`` keys of this target; the base class checks their types, ``__post_init__`` their values."""

    read_noise: float = 0.0  # std of the Gaussian noise on every array read, in the read's own units
    update_gain: float = 1.0  # every increment is written times this
    seed: int = 0  # of the read noise; the run's seed unless the config sets one

    def __post_init__(self) -> None:
        if not math.isfinite(self.read_noise) or self.read_noise < 0:
            raise TargetError(f"target.read_noise = {self.read_noise!r} is invalid: expected a finite number >= 0")
        if not math.isfinite(self.update_gain) or not 0 < self.update_gain <= 10:
            raise TargetError(f"target.update_gain = {self.update_gain!r} is invalid: expected a number in (0, 10]")


class NoisyFloatTarget(Target):
    """Exact EP dynamics on the CPU in float32, every read with Gaussian noise of std ``read_noise``."""

    description = "float weights read through a noisy analog read path (options: read_noise, update_gain, seed)"
    Options = NoisyFloatOptions

    def __init__(self, spec, options: NoisyFloatOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(spec, options, **kwargs)
        self._weights: dict[str, torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(self.options.seed)
        self._reads = layers.Reads(forward=self._forward, transpose=self._transpose)

    @property
    def capabilities(self) -> Capabilities:
        noisy = self.options.read_noise > 0 or self.options.update_gain != 1.0
        return Capabilities(name=self.name, device="cpu", dtype="float32", exact=not noisy,
                            notes=f"read_noise {self.options.read_noise:g}, update_gain {self.options.update_gain:g}")

    # the four hooks: the base class has checked every argument before they run

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
        self._weights = {n: w.detach().to("cpu", torch.float32).clone() for n, w in weights.items()}

    def _read_weights(self) -> dict[str, torch.Tensor]:
        return {n: w.clone() for n, w in self._weights.items()}

    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        states = start_states(start, torch.device("cpu"), torch.float32)
        with torch.no_grad():
            return dynamics.relax(self.spec, self._weights, x.to("cpu", torch.float32), steps, beta, y, states,
                                  stop_tolerance=stop_tolerance, reads=self._reads)

    def _apply_update(self, update: Update) -> UpdateReport:
        for name, delta in update.delta.items():
            self._weights[name].add_(delta.to(torch.float32), alpha=self.options.update_gain)
        return UpdateReport()

    # the read path

    def _noisy(self, out: torch.Tensor) -> torch.Tensor:
        if self.options.read_noise == 0:
            return out
        return out + self.options.read_noise * torch.randn(out.shape, generator=self._gen, dtype=out.dtype)

    def _forward(self, geo, w: torch.Tensor, s_prev: torch.Tensor):
        out, ctx = layers.forward(geo, w, s_prev)
        return self._noisy(out), ctx

    def _transpose(self, geo, w: torch.Tensor, s_next: torch.Tensor, ctx) -> torch.Tensor:
        return self._noisy(layers.transpose(geo, w, s_next, ctx))
