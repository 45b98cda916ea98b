"""The target interface: the few operations a device offers to EP learning (docs/architecture.md).

EP learns from states alone, so a device only has to hold weights, relax a (nudged) phase, hand its states
back and take a weight increment. Everything else (estimators, optimizers, checkpoints, metrics, export) is
written once on the host against this interface.

As in python-can's ``BusABC``, the public methods here do the generic work once (argument checks, "holds no
weights yet", resolving where a phase starts, typed options) and call a small protected hook that a target
implements: ``_program``, ``_read_weights``, ``_relax``, ``_apply_update`` and, for targets that model time,
``_wait``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, ContextManager, Mapping, Sequence, Union

import torch

from hwtoolkit import schema
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.parameters import check_parameters
from hwtoolkit.network.spec import NetworkSpec

Init = Union[None, str, Sequence[torch.Tensor], Relaxation]
"""Where a phase starts: ``None``/``"zero"``, ``"keep"`` (the device's last states), or given states."""

Start = Union[None, Relaxation, Sequence[torch.Tensor]]
"""``Init`` resolved by the base class: zeros (``None``), a phase's end, or states of the checked shapes."""

Parameters = Mapping[str, torch.Tensor]


class TargetError(RuntimeError):
    """A target could not do what was asked (bad option, device fault, unsupported network)."""


class Quantization(enum.Enum):
    """Which ``[quant]`` networks a target runs."""

    NONE = "none"  # float networks only
    ANY = "any"  # float or quantized (Brevitas) networks
    FIXED_POINT = "fixed_point"  # only the fixed-point network (pow2 scales, integer weights and states)


@dataclass(frozen=True)
class Capabilities:
    """What an open target is and can do; the learning loop reads this, never the target's type."""

    name: str
    device: str  # the torch device its states and weights are returned on
    dtype: str
    exact: bool  # weights and states are exact floating-point math (no device effects)
    conv: bool = True  # can hold convolutional layers
    untied: bool = True  # can hold separate feedback weights
    max_steps: int | None = None  # longest phase it can relax
    update_trains: bool = False  # writes an update as two pulse trains: ``apply_update`` needs ``Update.trains``
    models_time: bool = False  # ``wait(seconds)`` lets simulated time pass (drift, decay)
    device_state: bool = False  # holds state beyond its weights (``device_state()``), saved with checkpoints
    address: str = ""  # where the device is reached (a serial port or URL), for devices outside the host
    notes: str = ""


@dataclass(frozen=True)
class Update:
    """One weight increment; ``trains = (a, b)`` with ``delta = a - b`` splits it into its two EP phase terms.

    A target whose ``capabilities.update_trains`` is set writes the trains one after the other (two pulse
    trains); every other target writes ``delta``.
    """

    delta: Parameters
    trains: tuple[Parameters, Parameters] | None = None


@dataclass
class UpdateReport:
    """What a weight update did on the device."""

    saturated: int = 0  # increments clipped at a device bound
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What a run hands every target besides its own options: the run's seed and its ``[quant]`` table.

    A target whose options have a ``seed`` field gets the run's seed unless the options set one; one whose
    options have a ``quant`` field gets the quantized network's config (``quantize.config.QuantConfig``).
    """

    seed: int = 0
    quant: Any = None


@dataclass(frozen=True)
class NoOptions:
    """The options of a target that has none."""


class Target(ABC):
    """A device that holds an EP network. Open one with ``targets.open(name, spec, **options)``.

    A target declares ``Options`` (a frozen dataclass of its ``[target]`` keys, validated in
    ``__post_init__`` with ``TargetError``s that name ``target.<key>``), the extra config ``tables`` it reads
    (such as ``("crossbar",)``; override ``configure`` to fold them into the options) and which ``[quant]``
    networks it runs (``quantization``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    tables: ClassVar[tuple[str, ...]] = ()
    quantization: ClassVar[Quantization] = Quantization.NONE
    reconnect_options: ClassVar[tuple[str, ...]] = ()  # options a resumed run may change: how the device is
    # reached (a port, a baud rate), never what it computes

    def __init__(self, spec: NetworkSpec, options: object | None = None, /, **kwargs: object) -> None:
        if options is None:
            options = self.configure(kwargs)
        elif kwargs:
            raise TypeError(f"pass the {type(self).__name__} options either as an Options object or as keywords")
        self.spec = spec
        self.options = options
        self._last: Relaxation | None = None
        self._programmed = False

    # ---- options -------------------------------------------------------------------------------------------

    @classmethod
    def configure(cls, options: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]] | None = None,
                  context: RunContext = RunContext()) -> Any:
        """The typed ``Options`` from the ``[target]`` keys, the target's own tables and the run's context."""
        tables = tables or {}
        foreign = sorted(set(tables) - set(cls.tables))
        if foreign:
            raise TargetError(f"the {cls.name or cls.__name__} target reads no [{foreign[0]}] table")
        return cls.build_options(options, context)

    @classmethod
    def build_options(cls, options: Mapping[str, Any], context: RunContext = RunContext()) -> Any:
        """``Options`` from ``[target]`` keys; the run's seed and quant config fill the fields that take them."""
        values = dict(options)
        declared = {f.name for f in dataclasses.fields(cls.Options)}
        if "seed" in declared:
            values.setdefault("seed", context.seed)
        if "quant" in declared and context.quant is not None:
            if "quant" in values:
                raise TargetError("target.quant is set by the [quant] table; remove it from [target]")
            values["quant"] = context.quant
        try:
            return schema.build(cls.Options, values, "target")
        except schema.SchemaError as e:
            raise TargetError(str(e)) from None

    @classmethod
    def check_quant(cls, quant: Any) -> None:
        """A ``TargetError`` unless this target runs the network of ``quant`` (a ``QuantConfig`` or ``None``)."""
        if quant is None or not quant.enabled:
            if cls.quantization is Quantization.FIXED_POINT:
                raise TargetError(f"the {cls.name} target runs the fixed-point network: set quant.weight_bits and "
                                  f"quant.state_bits (e.g. 8) and quant.scale = \"pow2\"")
            return
        if cls.quantization is Quantization.NONE:
            raise TargetError(f"target.name = {cls.name!r} is invalid with a [quant] table: the {cls.name} target "
                              f"runs float networks only; remove the table or choose a target that runs quantized "
                              f"networks (`hwtoolkit targets`)")
        if cls.quantization is Quantization.FIXED_POINT and not quant.fixed_point:
            raise TargetError(f"the {cls.name} target runs the fixed-point network: set quant.weight_bits and "
                              f"quant.state_bits (e.g. 8) and quant.scale = \"pow2\"; got {quant.describe()}")

    @classmethod
    def writes_trains(cls, options: Any) -> bool:
        """Whether a target with these options writes every update as two pulse trains (``Update.trains``)."""
        return False

    # ---- the interface ----------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def program(self, weights: Parameters) -> None:
        """Write every parameter through the device's write path."""
        caps = self.capabilities
        if self.spec.conv and not caps.conv:
            raise TargetError(f"the {self.name} target cannot hold convolutional layers ({self.spec.describe()})")
        if not self.spec.tied and not caps.untied:
            raise TargetError(f"the {self.name} target cannot hold untied feedback weights ({self.spec.describe()})")
        check_parameters(self.spec, weights)
        self._program(weights)
        self._programmed = True

    def read_weights(self) -> dict[str, torch.Tensor]:
        """What the device really holds, as tensors (copies: changing them changes nothing)."""
        self._require_weights()
        return self._read_weights()

    def relax(self, x: torch.Tensor, steps: int, beta: float = 0.0, y: torch.Tensor | None = None,
              init: Init = None, stop_tolerance: float = 0.0) -> Relaxation:
        """Relax one phase on input ``x`` (nudged towards ``y`` if ``beta != 0``); states as read back.

        At most ``steps`` steps; with ``stop_tolerance > 0`` the phase may end once no unit moves by more.
        """
        self._require_weights()
        self._check_phase(x, steps, beta, y, stop_tolerance)
        start = self._start(init, x.shape[0])
        self._last = self._relax(x, steps, float(beta), y, start, float(stop_tolerance))
        return self._last

    def apply_update(self, update: Update | Parameters) -> UpdateReport:
        """Add an increment (any subset of the parameters) through the device's write path.

        ``update`` is an ``Update`` or a plain increment; a target with ``capabilities.update_trains`` needs
        an ``Update`` with ``trains``. Every part is checked before anything is written.
        """
        if not isinstance(update, Update):
            update = Update(update)
        self._require_weights()
        check_parameters(self.spec, update.delta, complete=False)
        if update.trains is not None:
            for train in update.trains:
                check_parameters(self.spec, train, complete=False)
        if self.capabilities.update_trains and update.trains is None:
            raise TargetError(f"the {self.name} target writes an update as two pulse trains ({self.capabilities.notes})"
                              f"; pass Update(delta, trains): the learning loop does for EP estimators without "
                              f"momentum or weight decay")
        return self._apply_update(update)

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (drift, decay, diffusion); only where ``models_time``."""
        if not self.capabilities.models_time:
            raise TargetError(f"the {self.name} target does not model time")
        if not math.isfinite(seconds) or seconds < 0:
            raise TargetError(f"wait({seconds}) is invalid: expected finite simulated seconds >= 0")
        self._wait(float(seconds))

    def device_state(self) -> dict[str, Any]:
        """What the device holds beyond its weights (hidden conductances, time, counters, random state), as
        tensors and plain data, so that a checkpoint can restore the very same device; ``{}`` for none."""
        self._require_weights()
        return self._device_state() if self.capabilities.device_state else {}

    def load_device_state(self, state: Mapping[str, Any]) -> None:
        """Become the device ``device_state()`` described: its weights and everything else, bit for bit."""
        if not self.capabilities.device_state:
            raise TargetError(f"the {self.name} target holds no device state to restore")
        self._programmed = False  # a restore that fails leaves a target holding no weights, not half a device
        self._load_device_state(state)
        self._programmed = True

    def cost_report(self) -> dict[str, Any]:
        """What the training batches so far cost on the device (counts, energy, latency, and backprop's on the same
        device for comparison), written to ``summary.json`` as ``costs``; ``{}`` for a target that does not count
        its operations (docs/crossbar.md, "Cost accounting", describes the crossbar's)."""
        return {}

    def compute_context(self) -> ContextManager[object]:
        """The numerical setting (e.g. a compute precision) for host math on this target's states; none by default."""
        return nullcontext()

    def close(self) -> None:
        """Release the device."""

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- hooks a target implements ---------------------------------------------------------------------------

    @abstractmethod
    def _program(self, weights: Parameters) -> None:
        """Write every parameter (already checked)."""

    @abstractmethod
    def _read_weights(self) -> dict[str, torch.Tensor]:
        """Copies of what the device holds (weights are known to be there)."""

    @abstractmethod
    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        """One phase from ``start`` (``None`` = zeros; arguments already checked)."""

    @abstractmethod
    def _apply_update(self, update: Update) -> UpdateReport:
        """Write a checked update."""

    def _wait(self, seconds: float) -> None:
        """Let simulated time pass (only called where ``capabilities.models_time``)."""
        raise NotImplementedError

    def _device_state(self) -> dict[str, Any]:
        """The device's state (only called where ``capabilities.device_state``)."""
        raise NotImplementedError

    def _load_device_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``_device_state()``'s output (only called where ``capabilities.device_state``)."""
        raise NotImplementedError

    # ---- generic checks ---------------------------------------------------------------------------------------

    def _require_weights(self) -> None:
        if not self._programmed:
            raise TargetError("the target holds no weights yet: call program(weights) first")

    def _check_phase(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None,
                     stop_tolerance: float) -> None:
        if x.dim() == 0 or x.shape[0] == 0:
            raise TargetError("x holds no samples: a phase needs a batch of at least one")
        limit = self.capabilities.max_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (limit and steps > limit):
            valid = f"1 to {limit}" if limit else "an integer >= 1"
            raise TargetError(f"steps = {steps!r} is invalid: expected {valid}")
        if not math.isfinite(beta):
            raise TargetError(f"beta = {beta} is invalid: expected a finite number")
        if beta != 0.0 and y is None:
            raise TargetError("a nudged phase (beta != 0) needs targets y")
        if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point
                              or (y.numel() and not 0 <= int(y.min()) <= int(y.max()) < self.spec.classes)):
            raise TargetError(f"y must hold {x.shape[0]} class indices in [0, {self.spec.classes}); got a "
                              f"{y.dtype} tensor of shape {tuple(y.shape)}")
        if not math.isfinite(stop_tolerance) or stop_tolerance < 0:
            raise TargetError(f"stop_tolerance = {stop_tolerance} is invalid: expected a finite number >= 0")

    def _start(self, init: Init, batch: int) -> Start:
        """Resolve ``init``: ``None`` for zeros, the last phase for ``"keep"``, given states with checked shapes."""
        if init is None or (isinstance(init, str) and init == "zero"):
            return None
        if isinstance(init, str):
            if init != "keep":
                raise TargetError(f"init = {init!r} is invalid; use None, 'zero', 'keep', or a list of states")
            if self._last is None:
                raise TargetError("init = 'keep' but the target has not relaxed yet")
            return self._last
        states = init.states if isinstance(init, Relaxation) else init
        shapes = [tuple(s.shape) for s in states]
        expected = [(batch, *shape) for shape in self.spec.state_shapes]
        if shapes != expected:
            raise TargetError(f"initial states have shapes {shapes}, expected {expected}")
        return init


def start_states(start: Start, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor] | None:
    """A resolved start as state tensors on ``device`` in ``dtype`` (``None``: start from zeros)."""
    if start is None:
        return None
    states = start.states if isinstance(start, Relaxation) else start
    return [s.to(device, dtype) for s in states]


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
