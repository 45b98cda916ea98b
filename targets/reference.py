"""The reference target: the exact EP dynamics in PyTorch, on CPU or CUDA, in float32 or float64.

With a ``[quant]`` table it runs a quantized network built from Brevitas (``quantize.network``): the phases
relax through the quantized weights, input and states, and updates go to the float shadow weights.
How the phases are computed (Anderson solver, compute precision, channels-last layout, compiled or captured
chunks of steps) is set by the options of ``targets.relaxation.RelaxationOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ContextManager, Mapping

import torch

from hwtoolkit.network import anderson, compiled, dynamics
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.layers import EXACT
from hwtoolkit.network.precision import compute_precision
from hwtoolkit.network.spec import NetworkSpec

from .base import Capabilities, InputMemo, Quantization, Start, Target, TargetError, Update, UpdateReport, \
    start_states
from .options import TorchOptions, in_memory_format, parse_device, parse_quant
from .relaxation import RelaxationOptions


@dataclass(frozen=True)
class ReferenceOptions(TorchOptions, RelaxationOptions):
    """``device``, ``dtype``, how phases are computed (``RelaxationOptions``) and the run's ``[quant]`` table."""

    quant: Any = None  # a quantize.config.QuantConfig (or its table as a dict); None or all zeros: float

    def __post_init__(self) -> None:
        TorchOptions.__post_init__(self)
        object.__setattr__(self, "quant", parse_quant(self.quant))
        quantized = self.quant is not None and self.quant.enabled
        self.relaxation.check(parse_device(self.device, available=False), self.torch_dtype, quantized=quantized)

    @property
    def relaxation(self) -> RelaxationOptions:
        return RelaxationOptions(**{f.name: getattr(self, f.name) for f in fields(RelaxationOptions)})


class ReferenceTarget(Target):
    """Holds the parameters as torch tensors and relaxes with the analytic step of ``hwtoolkit.network``."""

    description = ("exact float dynamics in PyTorch, or a Brevitas-quantized network (options: device = 'cpu' | "
                   "'cuda[:N]', dtype = 'float32' | 'float64'; a [quant] table; how phases are computed: "
                   f"{RelaxationOptions.DESCRIPTION})")
    Options = ReferenceOptions
    quantization = Quantization.ANY

    def __init__(self, spec: NetworkSpec, options: ReferenceOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(spec, options, **kwargs)
        self.device = self.options.torch_device
        self.dtype = self.options.torch_dtype
        self.relaxation = self.options.relaxation
        self._params: dict[str, torch.Tensor] | None = None
        self._version = 0
        quant = self.options.quant
        self.quant = None
        if quant is not None and quant.enabled:
            from quantize.network import QuantEPNetwork

            self.quant = QuantEPNetwork(spec, quant).to(self.device, self.dtype)
        self._layout = self.relaxation.layout
        self._relaxer = self.relaxation.relaxer(spec)
        self._reads = self.quant.reads() if self.quant is not None else EXACT
        self._effective: tuple[int, dict[str, torch.Tensor]] | None = None
        self._drive_memo = InputMemo()
        self._drive: torch.Tensor | None = None

    @property
    def capabilities(self) -> Capabilities:
        quantized = self.quant is not None
        notes = ([f"quantized: {self.quant.cfg.describe()}"] if quantized else []) + self.relaxation.notes()
        return Capabilities(name=self.name, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
                            exact=not quantized and self.relaxation.precision == "float32", notes="; ".join(notes))

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The live parameters (for host-side computations that run on the same device)."""
        self._require_weights()
        return self._params

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
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

    def _read_weights(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().clone() for n, t in self._params.items()}

    def input_drive(self, x: torch.Tensor) -> torch.Tensor:
        """``P(W_1 x) + b_1`` for input ``x`` on the target's device, kept for every phase on the same input."""
        # The drive P(W_1 x) + b_1 is the same for every phase on the same input and weights; comparing the
        # input by value is one pass over x, far cheaper than the layer-1 product.
        if self._drive_memo.changed(x, self._version):
            self._drive = dynamics.input_drive(self.spec, self.effective_params(), x, self._reads)
        return self._drive

    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        x = in_memory_format(x.to(self.device, self.dtype), self._layout)
        y = None if y is None else y.to(self.device)
        with self.compute_context():
            drive = self.input_drive(x)
        states = start_states(start, self.device, self.dtype)
        if self._layout != torch.contiguous_format:
            states = [in_memory_format(s, self._layout) for s in (states or dynamics.zero_states(
                self.spec, x.shape[0], x))]
        with torch.no_grad(), self.compute_context():
            if self._relaxer is not None:
                return self._relaxer.relax(self.effective_params(), x, steps, beta, y, states, drive, stop_tolerance)
            if self.relaxation.solver == "anderson":
                return anderson.relax_anderson(self.spec, self.effective_params(), x, steps, beta, y, states, drive,
                                               stop_tolerance, self.relaxation.anderson_memory, self._reads)
            return dynamics.relax(self.spec, self.effective_params(), x, steps, beta, y, states, drive,
                                  stop_tolerance, self._reads)

    def _apply_update(self, update: Update) -> UpdateReport:
        for n, d in update.delta.items():
            self._params[n].add_(d.to(self.device, self.dtype))
        self._version += 1
        return UpdateReport()

    def compute_context(self) -> ContextManager[object]:
        """The configured compute precision, for the phases and for the update formed from their states."""
        return compute_precision(self.relaxation.precision, self.device)

    def close(self) -> None:
        if self._relaxer is not None:
            self._relaxer.clear()  # compiled chunks, and the GPU memory captured graphs hold
