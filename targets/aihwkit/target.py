"""The ``aihwkit`` target: EP on IBM aihwkit's analog tiles, for any aihwkit RPU configuration.

Every dense weight ``w<l>`` lives on one aihwkit ``AnalogTile`` built from an RPU configuration of aihwkit's presets
(``rpu_config = "EcRamPreset"``, ``"ReRamSBPreset"``, ``"TikiTakaEcRamPreset"``, ... any class of
``aihwkit.simulator.presets``, single devices and compound ones alike), or any RPU configuration registered by name
with ``register_rpu_config``. The relaxation reads the tiles: ``W s`` through the tile's forward pass and ``W^T s``
through its backward pass, with their IO non-idealities (converters, noise, bounds and their management as the
configuration sets them), at every step, layer 1's input drive included. The EP update goes through the tile's
pulsed update (aihwkit's stochastic pulse trains and device model): the increment of a tensor is written as the sum
of one outer product per input line (one-hot inputs), in one update call, or as two (``update = "two_trains"``: the
two EP phase terms one after the other). Biases and the readout of a ``ce`` network stay digital (host float32).
After each update a tile takes aihwkit's per-mini-batch step (decay and diffusion where its devices have them), as
aihwkit's analog optimizer does. A tensor's weights are scaled once, when first programmed, so that its largest |w|
takes ``weight_omega`` of the device's ``w_max`` (aihwkit's ``weight_scaling_omega`` idea, fixed so that every phase
sees the same gain). docs/crossbar.md, "The aihwkit target", compares it with the crossbar.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from hwtoolkit.network import dynamics, layers
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.spec import NetworkSpec
from targets.base import Capabilities, Start, Target, TargetError, Update, UpdateReport, start_states
from targets.options import check_option

DEVICE, DTYPE = torch.device("cpu"), torch.float32
UPDATES = ("combined", "two_trains")

RPU_CONFIGS: dict[str, Callable[[], Any]] = {}
"""RPU configurations registered by name (``register_rpu_config``), besides aihwkit's presets."""


def register_rpu_config(name: str, factory: Callable[[], Any]) -> None:
    """Make ``target.rpu_config = name`` build ``factory()``: any aihwkit RPU configuration (a ``SingleRPUConfig``
    of a device of your own, a ``UnitCellRPUConfig`` of a compound device, ...)."""
    if not isinstance(name, str) or not name or not callable(factory):
        raise TargetError(f"register_rpu_config needs a name and a callable returning an RPU configuration, "
                          f"got {name!r}, {factory!r}")
    RPU_CONFIGS[name] = factory


@dataclass(frozen=True)
class AihwkitOptions:
    """The ``[target]`` keys of the aihwkit target."""

    rpu_config: str = "EcRamPreset"  # a class of aihwkit.simulator.presets, or a name given to register_rpu_config
    weight_omega: float = 0.15  # the largest |w| first programmed into a tensor takes this fraction of w_max
    update: str = "combined"  # one pulsed update per increment, or "two_trains": the two EP phase terms in turn
    seed: int = 0  # device-to-device draws and pulse noise; the run's seed unless the config sets one

    def __post_init__(self) -> None:
        check_option("weight_omega", self.weight_omega, 0, 1, low_open=True)
        check_option("seed", self.seed, 0, 2**31 - 1, integer=True)
        if self.update not in UPDATES:
            raise TargetError(f"target.update = {self.update!r} is invalid: expected one of {UPDATES}")
        rpu_config_class(self.rpu_config)


def rpu_config_class(name: str) -> Callable[[], Any]:
    """What builds RPU configuration ``name``: a registered one, or a class of ``aihwkit.simulator.presets``;
    a ``TargetError`` listing both otherwise."""
    if isinstance(name, str) and name in RPU_CONFIGS:
        return RPU_CONFIGS[name]
    try:
        from aihwkit.simulator import presets
    except ImportError as e:
        raise TargetError(f"the aihwkit target needs aihwkit installed (`make install` builds it): {e}") from None
    names = sorted(n for n in dir(presets) if n.endswith("Preset") and isinstance(getattr(presets, n), type))
    cls = getattr(presets, name, None) if isinstance(name, str) else None
    if name not in names or cls is None:
        raise TargetError(f"target.rpu_config = {name!r} is invalid: expected an RPU configuration of "
                          f"aihwkit.simulator.presets, one of {names}, or one registered with "
                          f"targets.aihwkit.target.register_rpu_config ({sorted(RPU_CONFIGS)})")
    return cls


def device_w_max(rpu_config: Any) -> float:
    """The largest weight the configuration's devices hold (of the first device of a compound one)."""
    device = rpu_config.device
    for attr in ("unit_cell_devices", "devices"):
        if getattr(device, attr, None):
            device = getattr(device, attr)[0]
    if hasattr(device, "device"):
        device = device.device
    return float(abs(getattr(device, "w_max", 1.0)))


class AihwkitTarget(Target):
    """EP on aihwkit analog tiles: reads through the tiles' forward and backward passes, updates pulsed."""

    description = ("EP on IBM aihwkit analog tiles for an aihwkit RPU configuration (options: rpu_config, "
                   "weight_omega, update, seed)")
    Options = AihwkitOptions

    def __init__(self, spec: NetworkSpec, options: AihwkitOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(spec, options, **kwargs)
        if spec.conv:
            raise TargetError(f"the aihwkit target holds dense layers only ({spec.describe()})")
        if not spec.tied:
            raise TargetError("the aihwkit target holds tied networks only (one tile per weight, read both ways)")
        self.rpu_config = rpu_config_class(self.options.rpu_config)()
        self._tiles: dict[str, Any] = {}
        self._scales: dict[str, float] = {}
        self._digital: dict[str, torch.Tensor] = {}
        self._reads = layers.Reads(forward=self._forward, transpose=self._transpose)

    @classmethod
    def writes_trains(cls, options: Any) -> bool:
        return options.update == "two_trains"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(name=self.name, device=str(DEVICE), dtype="float32", exact=False, conv=False,
                            untied=False, update_trains=self.options.update == "two_trains",
                            notes=f"aihwkit {self.options.rpu_config}, weight_omega {self.options.weight_omega:g}, "
                                  f"update {self.options.update}")

    # ---- hooks --------------------------------------------------------------------------------------------------

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
        from aihwkit.simulator.tiles import AnalogTile

        for name, w in weights.items():
            w = w.detach().to(DEVICE, DTYPE)
            if not self._analog(name):
                self._digital[name] = w.clone()
                continue
            if name not in self._tiles:
                config = copy.deepcopy(self.rpu_config)
                index = sorted(n for n in weights if self._analog(n)).index(name)
                if hasattr(config.device, "construction_seed"):
                    config.device.construction_seed = self.options.seed * 1000 + index + 1
                torch.manual_seed(self.options.seed * 1000 + index)
                tile = AnalogTile(w.shape[0], w.shape[1], config)
                tile.set_learning_rate(1.0)
                self._tiles[name] = tile
                largest = float(w.abs().max())
                self._scales[name] = (largest if largest > 0 else 1.0) / (self.options.weight_omega
                                                                          * device_w_max(config))
            self._tiles[name].set_weights(w / self._scales[name])

    def _read_weights(self) -> dict[str, torch.Tensor]:
        out = {n: w.clone() for n, w in self._digital.items()}
        for name, tile in self._tiles.items():
            out[name] = tile.get_weights()[0].detach().to(DTYPE) * self._scales[name]
        return out

    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        x = x.to(DEVICE, DTYPE)
        y = None if y is None else y.to(DEVICE)
        states = start_states(start, DEVICE, DTYPE)
        params = {**self._digital, **{n: torch.empty(0) for n in self._tiles}}  # tiles are read, never copied
        geo = self.spec.layers[0]
        x_in = dynamics.normalize_input(self.spec, x).flatten(1)
        drive = lambda: layers.add_bias(geo, self._read("w1", x_in, False), self._digital["b1"])  # noqa: E731
        with torch.no_grad():
            return dynamics.relax(self.spec, params, x, steps, beta, y, states, drive, stop_tolerance,
                                  self._reads)

    def _apply_update(self, update: Update) -> UpdateReport:
        parts = ([update.delta] if update.trains is None or self.options.update == "combined"
                 else [update.trains[0], {n: -t for n, t in update.trains[1].items()}])
        for part in parts:
            for name, delta in part.items():
                delta = delta.detach().to(DEVICE, DTYPE)
                if name in self._tiles:
                    self._pulse(name, delta)
                else:
                    self._digital[name].add_(delta)
        for name in {n for part in parts for n in part if n in self._tiles}:
            self._tiles[name].post_update_step()  # once per mini-batch, as aihwkit's optimizer: decay, diffusion
        return UpdateReport(details={"pulsed_updates": len(parts)})

    # ---- reads and writes ------------------------------------------------------------------------------------

    @staticmethod
    def _analog(name: str) -> bool:
        return name.startswith("w") and name != "w_out"

    def _read(self, name: str, s: torch.Tensor, transposed: bool) -> torch.Tensor:
        """``W s`` (or ``W^T s``) through tile ``name``'s forward (backward) pass, in weight units."""
        tile = self._tiles[name].tile
        s = s.to(DTYPE).contiguous()
        out = tile.backward(s, False, False, False, False) if transposed else tile.forward(s, False, False, False,
                                                                                          False, False)
        return out * self._scales[name]

    def _forward(self, geo, w: torch.Tensor, s_prev: torch.Tensor):  # noqa: ANN001 - layers.forward's signature
        return self._read(f"w{geo.index}", s_prev.flatten(1), False), None

    def _transpose(self, geo, w: torch.Tensor, s_next: torch.Tensor, ctx) -> torch.Tensor:  # noqa: ANN001
        return self._read(f"w{geo.index}", s_next.flatten(1), True).view(s_next.shape[0], *geo.in_shape)

    def _pulse(self, name: str, delta: torch.Tensor) -> None:
        """Add ``delta`` to tile ``name`` by its pulsed update: one outer product per input line (one-hot x),
        ``W += -lr d x^T`` with lr 1 and ``d = -delta[:, k] / scale``."""
        tile = self._tiles[name].tile
        n_in = delta.shape[1]
        x = torch.eye(n_in, dtype=DTYPE)
        d = (-delta / self._scales[name]).t().contiguous()
        tile.update(x, d, False, False, False, False)
