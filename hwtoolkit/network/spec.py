"""Network specification: what an EP network is, validated, with its layer shapes.

A network is a chain of state layers ``s_1 .. s_L`` fed by a clamped input ``x``:
convolutional layers first (conv, then max/avg pooling), dense layers after.
With ``output = "mse"`` the last state layer has ``classes`` units and is the
output; with ``output = "ce"`` a readout ``o = W_out s_L + b_out`` lies outside
the energy (docs/ep.md#outputs-and-nudging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .activations import ACTIVATIONS

OUTPUTS = ("ce", "mse")
DYNAMICS = ("prototypical", "leaky")
UPDATES = ("synchronous", "alternating")
POOLS = ("max", "avg", "none")


class SpecError(ValueError):
    """A network specification field has an invalid value."""


def _require(ok: bool, field_name: str, value: object, valid: str) -> None:
    if not ok:
        raise SpecError(f"network.{field_name} = {value!r} is invalid: expected {valid}")


@dataclass(frozen=True)
class ConvLayer:
    """One convolutional state layer: ``s_l = rho(pool(conv(s_{l-1})) + b_l + feedback)``."""

    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    pool: str = "max"
    pool_size: int = 2

    def validate(self, index: int) -> None:
        name = f"conv[{index}]"
        _require(self.channels >= 1, f"{name}.channels", self.channels, "an integer >= 1")
        _require(self.kernel >= 1, f"{name}.kernel", self.kernel, "an integer >= 1")
        _require(self.stride >= 1, f"{name}.stride", self.stride, "an integer >= 1")
        _require(self.padding >= 0, f"{name}.padding", self.padding, "an integer >= 0")
        _require(self.pool in POOLS, f"{name}.pool", self.pool, f"one of {POOLS}")
        _require(self.pool_size >= 1, f"{name}.pool_size", self.pool_size, "an integer >= 1")


@dataclass(frozen=True)
class LayerGeometry:
    """Resolved shapes of one weight layer ``l`` (maps ``s_{l-1}`` to ``s_l``)."""

    index: int  # 1-based, as in the papers
    kind: str  # "conv" or "dense"
    in_shape: tuple[int, ...]  # shape of s_{l-1} (per sample)
    out_shape: tuple[int, ...]  # shape of s_l (per sample)
    weight_shape: tuple[int, ...]
    conv: ConvLayer | None = None
    conv_shape: tuple[int, ...] = ()  # conv output before pooling

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape[1:])


@dataclass(frozen=True)
class NetworkSpec:
    """The architecture and dynamics of an EP network (docs/ep.md#the-network-and-its-primitive-function)."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    conv: tuple[ConvLayer, ...] = ()
    hidden: tuple[int, ...] = ()
    classes: int = 10
    output: str = "ce"
    activation: str = "hard_sigmoid"
    dynamics: str = "prototypical"
    eps: float = 1.0
    update: str = "synchronous"  # or "alternating": odd layers first, then even layers from them
    tied: bool = True
    init_gain: float = 1.0
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require(
            len(self.input_shape) == 3 and all(int(d) >= 1 for d in self.input_shape),
            "input_shape", self.input_shape, "[channels, height, width], each >= 1",
        )
        for i, layer in enumerate(self.conv):
            layer.validate(i)
        _require(all(h >= 1 for h in self.hidden), "hidden", self.hidden, "a list of layer sizes >= 1")
        _require(self.classes >= 2, "classes", self.classes, "an integer >= 2")
        _require(self.output in OUTPUTS, "output", self.output, f"one of {OUTPUTS}")
        _require(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {sorted(ACTIVATIONS)}")
        _require(self.dynamics in DYNAMICS, "dynamics", self.dynamics, f"one of {DYNAMICS}")
        _require(0.0 < self.eps <= 1.0, "eps", self.eps, "a step size in (0, 1]")
        _require(self.update in UPDATES, "update", self.update, f"one of {UPDATES}")
        _require(self.dynamics == "leaky" or self.eps == 1.0, "eps", self.eps,
                 "1.0 with prototypical dynamics (set dynamics = \"leaky\" for eps < 1)")
        _require(self.init_gain > 0, "init_gain", self.init_gain, "a positive number")
        channels = self.input_shape[0]
        for name in ("input_mean", "input_std"):
            value = getattr(self, name)
            _require(len(value) in (0, channels), name, value, f"empty or {channels} values (one per input channel)")
        _require(all(s > 0 for s in self.input_std), "input_std", self.input_std, "positive values")
        _require(len(self.input_mean) == len(self.input_std), "input_std", self.input_std,
                 "as many values as input_mean")
        _require(self.output == "mse" or bool(self.conv or self.hidden), "hidden", self.hidden,
                 "at least one conv or hidden layer when output = \"ce\" (the readout needs a state layer)")
        self.layers  # resolves shapes, raising on a layer that shrinks the image to nothing

    @cached_property
    def layers(self) -> tuple[LayerGeometry, ...]:
        """The weight layers inside the energy, input side first."""
        geos: list[LayerGeometry] = []
        shape: tuple[int, ...] = tuple(int(d) for d in self.input_shape)
        for i, c in enumerate(self.conv):
            _, h, w = shape
            ch = (h + 2 * c.padding - c.kernel) // c.stride + 1
            cw = (w + 2 * c.padding - c.kernel) // c.stride + 1
            _require(ch >= 1 and cw >= 1, f"conv[{i}].kernel", c.kernel, f"a kernel that fits the {h}x{w} input")
            oh, ow = (ch // c.pool_size, cw // c.pool_size) if c.pool != "none" else (ch, cw)
            _require(oh >= 1 and ow >= 1, f"conv[{i}].pool_size", c.pool_size, f"a pool that fits the {ch}x{cw} map")
            out = (c.channels, oh, ow)
            geos.append(LayerGeometry(len(geos) + 1, "conv", shape, out, (c.channels, shape[0], c.kernel, c.kernel),
                                      c, (c.channels, ch, cw)))
            shape = out
        sizes = list(self.hidden) + ([self.classes] if self.output == "mse" else [])
        for n in sizes:
            fan_in = math.prod(shape)
            geos.append(LayerGeometry(len(geos) + 1, "dense", shape, (n,), (n, fan_in)))
            shape = (n,)
        return tuple(geos)

    @property
    def has_max_pool(self) -> bool:
        """Whether any layer max-pools: only then does the EP update need the weights (for the pool indices)."""
        return any(c.pool == "max" for c in self.conv)

    @property
    def num_state_layers(self) -> int:
        return len(self.layers)

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(g.out_shape for g in self.layers)

    @property
    def readout_shape(self) -> tuple[int, int] | None:
        """``(classes, units of s_L)`` for a CE readout, ``None`` for an MSE output layer."""
        if self.output != "ce":
            return None
        return (self.classes, math.prod(self.layers[-1].out_shape))

    @property
    def num_weight_layers(self) -> int:
        """Layers that take a learning rate: the state layers, plus the readout for CE."""
        return self.num_state_layers + (1 if self.output == "ce" else 0)

    def parameter_layers(self) -> dict[str, int]:
        """Parameter name -> 0-based weight-layer index (used for per-layer learning rates)."""
        names: dict[str, int] = {}
        for g in self.layers:
            names[f"w{g.index}"] = g.index - 1
            names[f"b{g.index}"] = g.index - 1
            if not self.tied and g.index >= 2:
                names[f"fb{g.index}"] = g.index - 1
        if self.output == "ce":
            names["w_out"] = self.num_state_layers
            names["b_out"] = self.num_state_layers
        return names

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for g in self.layers:
            shapes[f"w{g.index}"] = g.weight_shape
            shapes[f"b{g.index}"] = (g.out_shape[0],)
            if not self.tied and g.index >= 2:
                shapes[f"fb{g.index}"] = g.weight_shape
        if self.readout_shape is not None:
            shapes["w_out"] = self.readout_shape
            shapes["b_out"] = (self.classes,)
        return shapes

    def describe(self) -> str:
        """A one-line summary such as ``784-512-10 ce, tied, hard_sigmoid``."""
        parts = ["x".join(str(d) for d in self.input_shape)]
        parts += [f"conv{c.kernel}x{c.kernel}:{c.channels}" + (f"/{c.pool}{c.pool_size}" if c.pool != "none" else "")
                  for c in self.conv]
        parts += [str(h) for h in self.hidden] + [str(self.classes)]
        tie = "tied" if self.tied else "untied"
        return f"{'-'.join(parts)} {self.output}, {tie}, {self.activation}, {self.dynamics}"
