"""The target interface: the few operations a device offers to EP learning (DESIGN.md).

EP learns from states alone, so a device only has to hold weights, relax a
(nudged) phase, hand its states back and take a weight increment. Everything
else — estimators, optimizers, checkpoints, metrics, export — is written once on
the host against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ClassVar, ContextManager, Mapping, Sequence, Union

import torch

from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.spec import NetworkSpec

Init = Union[None, str, Sequence[torch.Tensor], Relaxation]
"""Where a phase starts: ``None``/``"zero"``, ``"keep"`` (the device's last states), or given states."""


Trains = tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]
"""An update split into the increments of its two phases, ``delta = trains[0] - trains[1]``."""


class TargetError(RuntimeError):
    """A target could not do what was asked (bad option, device fault, unsupported network)."""


@dataclass(frozen=True)
class Capabilities:
    """What a target is and can do; the learning loop reads this, never the target's type."""

    name: str
    device: str
    dtype: str
    exact: bool  # weights and states are exact floating-point math (no device effects)
    conv: bool = True  # can hold convolutional layers
    untied: bool = True  # can hold separate feedback weights
    max_steps: int | None = None  # longest phase it can relax
    update_trains: bool = False  # writes an update as two pulse trains (``apply_update(delta, trains)``)
    notes: str = ""


@dataclass
class UpdateReport:
    """What a weight update did on the device."""

    saturated: int = 0  # increments clipped at a device bound
    details: dict = field(default_factory=dict)


class Target(ABC):
    """A device that holds an EP network. Open one with ``targets.open(name, spec, **options)``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def program(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Write every parameter through the device's write path."""

    @abstractmethod
    def read_weights(self) -> dict[str, torch.Tensor]:
        """What the device really holds, as host tensors (copies: changing them changes nothing)."""

    @abstractmethod
    def relax(self, x: torch.Tensor, steps: int, beta: float = 0.0, y: torch.Tensor | None = None,
              init: Init = None, stop_tolerance: float = 0.0) -> Relaxation:
        """Relax one phase on input ``x`` (nudged towards ``y`` if ``beta != 0``); states as read back.

        At most ``steps`` steps; with ``stop_tolerance > 0`` the phase may end once no unit moves by more.
        """

    @abstractmethod
    def apply_update(self, delta: Mapping[str, torch.Tensor], trains: Trains | None = None) -> UpdateReport:
        """Add ``delta`` (any subset of the parameters) through the device's write path.

        Targets with ``capabilities.update_trains`` also get ``trains``: the same increment as the two EP
        phase terms ``(a, b)`` with ``delta = a - b``, to write as two pulse trains; others ignore it.
        """

    def compute_context(self) -> ContextManager[object]:
        """The numerical setting (e.g. a compute precision) for host math on this target's states; none by default."""
        return nullcontext()

    def close(self) -> None:
        """Release the device."""

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InputMemo:
    """Remembers the last input (by value, never by identity) and the weights version it came with.

    A target keeps what it computes once per input and weights (the input drive) until either changes.
    """

    def __init__(self) -> None:
        self._x: torch.Tensor | None = None
        self._version = -1

    def changed(self, x: torch.Tensor, version: int) -> bool:
        """Whether ``x`` or ``version`` differ from the last call's (one pass over ``x``); remembers them."""
        if self._version == version and self._x is not None and self._x.shape == x.shape and torch.equal(self._x, x):
            return False
        self._x, self._version = x.clone(), version
        return True


def initial_states(spec: NetworkSpec, init: Init, last: Relaxation | None, batch: int, device: torch.device,
                   dtype: torch.dtype) -> list[torch.Tensor] | None:
    """Resolve a phase's ``init`` to states on ``device`` (``None`` = zeros), checking their shapes."""
    if init is None or init == "zero":
        return None
    if init == "keep":
        if last is None:
            raise TargetError("init = 'keep' but the target has not relaxed yet")
        return list(last.states)
    states = init.states if isinstance(init, Relaxation) else init
    if isinstance(states, str):
        raise TargetError(f"init = {init!r} is invalid; use None, 'zero', 'keep', or a list of states")
    states = [s.to(device, dtype) for s in states]
    shapes = [tuple(s.shape) for s in states]
    expected = [(batch, *shape) for shape in spec.state_shapes]
    if shapes != expected:
        raise TargetError(f"initial states have shapes {shapes}, expected {expected}")
    return states
