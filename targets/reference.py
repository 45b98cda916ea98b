"""The reference target: the exact EP dynamics in PyTorch, on CPU or CUDA, in float32 or float64.

With a ``quant`` option it runs a quantized network built from Brevitas (``quantize.network``): the phases
relax through the quantized weights, input and states, and updates go to the float shadow weights.
How the phases are computed (Anderson solver, compute precision, channels-last layout, compiled or captured
chunks of steps) is set by the options of ``targets.relaxation.RelaxationOptions``.
"""

from __future__ import annotations

from typing import ContextManager, Mapping

import torch

from hwtoolkit.network import anderson, compiled, dynamics
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.layers import EXACT
from hwtoolkit.network.parameters import check_parameters
from hwtoolkit.network.precision import compute_precision
from hwtoolkit.network.spec import NetworkSpec

from .base import Capabilities, Init, InputMemo, Target, TargetError, Trains, UpdateReport, initial_states
from .options import in_memory_format, parse_device, parse_dtype
from .registry import register
from .relaxation import RelaxationOptions


@register("reference")
class ReferenceTarget(Target):
    """Holds the parameters as torch tensors and relaxes with the analytic step of ``hwtoolkit.network``."""

    description = ("exact float dynamics in PyTorch, or a Brevitas-quantized network (options: device = 'cpu' | "
                   "'cuda[:N]', dtype = 'float32' | 'float64', quant = a [quant] table; how phases are computed: "
                   f"{RelaxationOptions.DESCRIPTION})")

    def __init__(self, spec: NetworkSpec, device: str = "cpu", dtype: str = "float32",
                 quant: Mapping[str, object] | None = None, solver: str = "plain",
                 anderson_memory: int = anderson.DEFAULT_MEMORY, precision: str = "float32",
                 memory_format: str = "contiguous", compile: str = "none",  # noqa: A002 - the option's name
                 compile_chunk: int = compiled.DEFAULT_CHUNK) -> None:
        super().__init__(spec)
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.relaxation = RelaxationOptions(solver, anderson_memory, precision, memory_format, compile, compile_chunk)
        self._params: dict[str, torch.Tensor] | None = None
        self._version = 0
        self.quant = self._open_quant(quant)
        self.relaxation.check(self.device, self.dtype, quantized=self.quant is not None)
        self._layout = self.relaxation.layout
        self._relaxer = self.relaxation.relaxer(spec)
        self._reads = self.quant.reads() if self.quant is not None else EXACT
        self._effective: tuple[int, dict[str, torch.Tensor]] | None = None
        self._drive_memo = InputMemo()
        self._drive: torch.Tensor | None = None
        self._last: Relaxation | None = None

    def _open_quant(self, quant: Mapping[str, object] | None):
        if not quant:
            return None
        from quantize.config import QuantConfig, QuantConfigError

        try:
            cfg = QuantConfig(**quant)
        except TypeError as e:
            raise TargetError(f"target option quant = {dict(quant)!r} is invalid: {e}") from None
        except QuantConfigError as e:
            raise TargetError(str(e)) from None
        if not cfg.enabled:
            return None
        from quantize.network import QuantEPNetwork

        return QuantEPNetwork(self.spec, cfg).to(self.device, self.dtype)

    @property
    def capabilities(self) -> Capabilities:
        quantized = self.quant is not None
        notes = ([f"quantized: {self.quant.cfg.describe()}"] if quantized else []) + self.relaxation.notes()
        return Capabilities(name=self.name, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
                            exact=not quantized and self.relaxation.precision == "float32", notes="; ".join(notes))

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The live parameters (for host-side computations that run on the same device)."""
        if self._params is None:
            raise TargetError("the target holds no weights yet: call program(weights) first")
        return self._params

    def program(self, weights: Mapping[str, torch.Tensor]) -> None:
        check_parameters(self.spec, weights)
        if self.quant is not None:
            self.quant.load_shadow(weights)
            self._params = self.quant.shadow()
        else:
            self._params = {n: in_memory_format(t.detach().to(self.device, self.dtype).clone(), self._layout)
                            for n, t in weights.items()}
        self._version += 1

    def effective_params(self) -> dict[str, torch.Tensor]:
        """The parameters the dynamics use: the weights themselves, or their quantized values."""
        if self.quant is None:
            return self.params
        if self._effective is None or self._effective[0] != self._version:
            self.params  # raises if nothing is programmed yet
            self._effective = (self._version, self.quant.effective_params())
        return self._effective[1]

    def read_weights(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().clone() for n, t in self.params.items()}

    def _input_drive(self, x: torch.Tensor) -> torch.Tensor:
        # The drive P(W_1 x) + b_1 is the same for every phase on the same input and weights; comparing the
        # input by value is one pass over x, far cheaper than the layer-1 product.
        if self._drive_memo.changed(x, self._version):
            self._drive = dynamics.input_drive(self.spec, self.effective_params(), x, self._reads)
        return self._drive

    def relax(self, x: torch.Tensor, steps: int, beta: float = 0.0, y: torch.Tensor | None = None,
              init: Init = None, stop_tolerance: float = 0.0) -> Relaxation:
        x = in_memory_format(x.to(self.device, self.dtype), self._layout)
        y = None if y is None else y.to(self.device)
        with self.compute_context():
            drive = self._input_drive(x)
        states = initial_states(self.spec, init, self._last, x.shape[0], self.device, self.dtype)
        if self._layout != torch.contiguous_format:
            states = [in_memory_format(s, self._layout) for s in (states or dynamics.zero_states(
                self.spec, x.shape[0], x))]
        with torch.no_grad(), self.compute_context():
            if self._relaxer is not None:
                self._last = self._relaxer.relax(self.effective_params(), x, steps, beta, y, states, drive,
                                                 stop_tolerance)
            elif self.relaxation.solver == "anderson":
                self._last = anderson.relax_anderson(self.spec, self.effective_params(), x, steps, beta, y, states,
                                                     drive, stop_tolerance, self.relaxation.anderson_memory,
                                                     self._reads)
            else:
                self._last = dynamics.relax(self.spec, self.effective_params(), x, steps, beta, y, states, drive,
                                            stop_tolerance, self._reads)
        return self._last

    def apply_update(self, delta: Mapping[str, torch.Tensor], trains: Trains | None = None) -> UpdateReport:
        check_parameters(self.spec, delta, complete=False)
        for n, d in delta.items():
            self.params[n].add_(d.to(self.device, self.dtype))
        self._version += 1
        return UpdateReport()

    def compute_context(self) -> ContextManager[object]:
        """The configured compute precision, for the phases and for the update formed from their states."""
        return compute_precision(self.relaxation.precision, self.device)

    def close(self) -> None:
        if self._relaxer is not None:
            self._relaxer.clear()  # compiled chunks, and the GPU memory captured graphs hold
