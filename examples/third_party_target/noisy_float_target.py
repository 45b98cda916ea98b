"""A third-party hwtoolkit target in one file: float weights read through a noisy analog read path.

Every array read (``W_1 x`` driving the first layer, ``W s`` going up, ``W^T s`` coming down) gets fresh,
independent Gaussian noise of std ``read_noise`` per output at every step of a phase, the way an analog
array's readout does; the class readout of a ``ce`` network (``w_out``) is digital and exact. Updates are
written scaled by ``update_gain`` (a write path that over- or under-shoots). With both at their defaults the
target computes exactly what the reference target computes. See README.md beside this file for how to adapt it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from hwtoolkit.network import dynamics, layers
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.parameters import check_parameters
from hwtoolkit.network.spec import NetworkSpec
from targets import Capabilities, Start, Target, TargetError, Update, UpdateReport, check_option, start_states

DEVICE, DTYPE = torch.device("cpu"), torch.float32


@dataclass(frozen=True)
class NoisyFloatOptions:
    """The ``[target]`` keys of this target; the base class checks their types, ``__post_init__`` their values."""

    read_noise: float = 0.0  # std of the Gaussian noise on every array read, in the read's own units
    update_gain: float = 1.0  # every increment is written times this
    seed: int = 0  # of the read noise; the run's seed unless the config sets one

    def __post_init__(self) -> None:
        check_option("read_noise", self.read_noise, 0, 10)  # a TargetError naming target.read_noise
        check_option("update_gain", self.update_gain, 0, 10, low_open=True)
        check_option("seed", self.seed, 0, 2**63 - 1, integer=True)


class NoisyFloatTarget(Target):
    """Exact EP dynamics on the CPU in float32, every array read with Gaussian noise of std ``read_noise``."""

    description = "float weights read through a noisy analog read path (options: read_noise, update_gain, seed)"
    Options = NoisyFloatOptions

    def __init__(self, spec: NetworkSpec, options: NoisyFloatOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(spec, options, **kwargs)  # sets self.spec and self.options (typed and validated)
        self._weights: dict[str, torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(self.options.seed)
        self._reads = layers.Reads(forward=self._forward, transpose=self._transpose)

    @property
    def capabilities(self) -> Capabilities:
        noisy = self.options.read_noise > 0
        return Capabilities(name=self.name, device=str(DEVICE), dtype="float32",
                            exact=not noisy and self.options.update_gain == 1.0,
                            device_state=noisy,  # the noise generator: restored on resume and by `evaluate`
                            notes=f"read_noise {self.options.read_noise:g}, update_gain {self.options.update_gain:g}")

    # ---- the four hooks: the base class has checked every argument before they run ---------------------------

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
        self._weights = {n: w.detach().to(DEVICE, DTYPE).clone() for n, w in weights.items()}

    def _read_weights(self) -> dict[str, torch.Tensor]:
        return {n: w.clone() for n, w in self._weights.items()}

    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        x = x.to(DEVICE, DTYPE)
        y = None if y is None else y.to(DEVICE)
        states = start_states(start, DEVICE, DTYPE)  # None: the phase starts from zeros
        with torch.no_grad():
            return dynamics.relax(self.spec, self._weights, x, steps, beta, y, states, self._drive(x),
                                  stop_tolerance, self._reads)

    def _apply_update(self, update: Update) -> UpdateReport:
        for name, delta in update.delta.items():
            self._weights[name].add_(delta.to(DEVICE, DTYPE), alpha=self.options.update_gain)
        return UpdateReport()

    # ---- device state: what a checkpoint needs to continue with the very same draws ----------------------------

    def _device_state(self) -> dict[str, Any]:
        return {"weights": self._read_weights(), "generator": self._gen.get_state()}

    def _load_device_state(self, state: Mapping[str, Any]) -> None:
        weights, generator = state.get("weights"), state.get("generator")
        if not isinstance(weights, Mapping) or not isinstance(generator, torch.Tensor):
            raise TargetError("device state must hold 'weights' (a dict of tensors) and 'generator' (a tensor)")
        try:
            check_parameters(self.spec, weights)
            self._gen.set_state(generator)
        except (ValueError, RuntimeError) as e:
            raise TargetError(f"device state does not fit this target: {e}") from None
        self._program(weights)

    # ---- the read path --------------------------------------------------------------------------------------

    def _noisy(self, out: torch.Tensor) -> torch.Tensor:
        if self.options.read_noise == 0:
            return out
        return out + self.options.read_noise * torch.randn(out.shape, generator=self._gen, dtype=out.dtype)

    def _drive(self, x: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """Layer 1's input read ``W_1 x + b_1``: computed once per phase, with fresh noise at every step."""
        if self.options.read_noise == 0:
            return None  # dynamics.relax computes the exact drive itself
        geo = self.spec.layers[0]
        exact, _ = layers.forward(geo, self._weights["w1"], dynamics.normalize_input(self.spec, x))
        return lambda: layers.add_bias(geo, self._noisy(exact), self._weights["b1"])

    def _forward(self, geo, w: torch.Tensor, s_prev: torch.Tensor):  # noqa: ANN001 - layers.forward's signature
        out, ctx = layers.forward(geo, w, s_prev)
        return self._noisy(out), ctx

    def _transpose(self, geo, w: torch.Tensor, s_next: torch.Tensor, ctx) -> torch.Tensor:  # noqa: ANN001
        return self._noisy(layers.transpose(geo, w, s_next, ctx))
