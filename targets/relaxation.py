"""How the reference target computes its phases: solver, compute precision, memory layout and compilation.

``solver``, ``memory_format`` and ``compile`` change how fast a phase reaches its fixed point, not the fixed
point; ``precision`` changes how its products round (``hwtoolkit.diagnostics.precision`` measures the effect).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from hwtoolkit.network import anderson, compiled
from hwtoolkit.network.precision import PRECISIONS, check_precision

from .base import TargetError
from .options import parse_memory_format

SOLVERS = {"plain": "iterate the step map", "anderson": "Anderson-accelerated iteration, same fixed point"}
COMPILE = {"none": "eager", **{m: m for m in compiled.MODES if m != "eager"}}  # option value -> CompiledRelaxer mode


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TargetError(f"target.{name} = {value!r} is invalid: expected an integer >= 1")


@dataclass(frozen=True)
class RelaxationOptions:
    """The reference target's options for computing a phase (each checked when the target opens)."""

    solver: str = "plain"  # or "anderson" (network.anderson)
    anderson_memory: int = anderson.DEFAULT_MEMORY  # iterates mixed by the Anderson solver
    precision: str = "float32"  # of the matmuls and convolutions (network.precision)
    memory_format: str = "contiguous"  # or "channels_last" (NHWC conv weights, inputs and states)
    compile: str = "none"  # or a network.compiled mode: "inductor", "cuda_graph", "inductor_cuda_graph"
    compile_chunk: int = compiled.DEFAULT_CHUNK  # steps per compiled or captured chunk

    DESCRIPTION = (f"solver = {' | '.join(map(repr, SOLVERS))}, anderson_memory ({anderson.DEFAULT_MEMORY}), "
                   f"precision = {' | '.join(map(repr, PRECISIONS))}, memory_format = 'contiguous' | "
                   f"'channels_last', compile = {' | '.join(map(repr, COMPILE))}, "
                   f"compile_chunk ({compiled.DEFAULT_CHUNK})")

    def check(self, device: torch.device, dtype: torch.dtype, quantized: bool) -> None:
        """A ``TargetError`` naming the option that is invalid, or that the device, dtype or a quant table rule out."""
        if self.solver not in SOLVERS:
            raise TargetError(f"target.solver = {self.solver!r} is invalid; valid: {list(SOLVERS)}")
        _positive_int("anderson_memory", self.anderson_memory)
        _positive_int("compile_chunk", self.compile_chunk)
        parse_memory_format(self.memory_format)
        try:
            check_precision(self.precision, device)
        except ValueError as e:
            raise TargetError(f"target.{e}") from None
        if self.compile not in COMPILE:
            raise TargetError(f"target.compile = {self.compile!r} is invalid; valid: {list(COMPILE)}")
        if self.precision != "float32" and dtype != torch.float32:
            raise TargetError(f"target.precision = {self.precision!r} needs dtype = 'float32', not "
                              f"{str(dtype).removeprefix('torch.')!r}: it lowers the precision of float32 products")
        for name, value in (("precision", self.precision), ("solver", self.solver), ("compile", self.compile),
                            ("memory_format", self.memory_format)):
            if quantized and value != getattr(RelaxationOptions, name):
                raise TargetError(f"target.{name} = {value!r} cannot be used with a [quant] table: the quantized "
                                  f"network rounds its inputs and states on a grid; leave {name} at its default")
        if self.compile != "none" and self.solver != "plain":
            raise TargetError(f"target.compile = {self.compile!r} runs the plain iteration: it cannot be combined "
                              f"with solver = {self.solver!r}")
        if "cuda_graph" in self.compile and device.type != "cuda":
            raise TargetError(f"target.compile = {self.compile!r} needs device = 'cuda'; on {device} use 'inductor'")

    @property
    def layout(self) -> torch.memory_format:
        return parse_memory_format(self.memory_format)

    def relaxer(self, spec) -> compiled.CompiledRelaxer | None:
        """The compiled relaxer these options ask for (None: relax eagerly)."""
        return None if self.compile == "none" else compiled.CompiledRelaxer(spec, COMPILE[self.compile],
                                                                           self.compile_chunk)

    def notes(self) -> list[str]:
        """``"name: value"`` for every option that differs from its default."""
        return [f"{f.name}: {getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != f.default]
