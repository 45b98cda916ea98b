"""The RTL core's parameters, memory map, and a network's image in its memories (docs/fpga.md).

A network reaches the core as the board protocol's image (``targets.serial.image.BoardImage``: the CONFIGURE
record and the tensors by id), so the core runs exactly what a board running the C firmware runs.
``core_image`` lays it out as bus writes and refuses, naming what is wrong, a network the core cannot hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from firmware_interface.protocol import BIAS, FEEDBACK, SHIFTS, W, tensor_id
from quantize.fixed_point import BETA_FRAC, FixedPointNetwork

# regions of the bus (word address = region << 20 | offset)
R_CTRL, R_LAYER, R_WEIGHT, R_BIAS, R_FWDSH, R_FBSH, R_STATE, R_INPUT = range(8)
# registers of region 0
CTRL, STATUS, CFG, INPUT_SIZE, STEPS, BETA_Q, TARGET, NUDGE_SHIFT, MAX_DELTA, CYCLES, CUR, ID, CAPS0, CAPS1, \
    CAPS2 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14
# fields of a layer's registers (region 1, offset = 8 * layer + field)
L_UNITS, L_OFF, L_WBASE, L_FBBASE, L_SHIFT = range(5)
ID_WORD = 0x45500001
BETA_LIMIT = 4 << BETA_FRAC  # |beta_q| the accumulator bound of the fixed-point model allows for


def address(region: int, offset: int = 0) -> int:
    """The bus word address of ``offset`` in ``region``."""
    return region << 20 | offset


class CoreFitError(ValueError):
    """The network (or a phase) does not fit the core's parameters."""


@dataclass(frozen=True)
class CoreParams:
    """The Verilog parameters of ``ep_relax_core`` (rtl/ep_relax_core.v), with the same names."""

    LANES: int = 4
    WW: int = 16
    SW: int = 16
    ACC_W: int = 48
    BETA_W: int = 20
    SH_W: int = 6
    MAX_LAYERS: int = 4
    WDEPTH: int = 4096
    UDEPTH: int = 512
    IDEPTH: int = 1024
    DDEPTH: int = 256
    SPRAM: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.LANES <= 16:
            raise CoreFitError(f"LANES = {self.LANES}: the bus addresses 1 to 16 weight banks")
        if not 1 <= self.WDEPTH <= 1 << 16 or not 1 <= self.UDEPTH <= 1 << 15 or not 1 <= self.IDEPTH <= 1 << 16:
            raise CoreFitError(f"memory depths {self.WDEPTH}, {self.UDEPTH}, {self.IDEPTH} exceed what the bus "
                               f"addresses (2^16 weight words, 2^15 units, 2^16 inputs)")
        if self.ACC_W < self.WW + self.SW + 1 or self.ACC_W < self.BETA_W + self.SW + 2 or self.ACC_W > 64:
            raise CoreFitError(f"ACC_W = {self.ACC_W} must hold a product ({self.WW + self.SW + 1} bits) and a "
                               f"nudge ({self.BETA_W + self.SW + 2} bits), at most 64")

    def verilog(self) -> dict[str, int]:
        """The parameters as the simulator and synthesis take them."""
        return asdict(self)


@dataclass(frozen=True)
class LayerLayout:
    """Where a state layer lives: its units, first state/bias/shift index, weight bases, state shift."""

    units: int
    offset: int
    fan_in: int
    w_base: int
    fb_base: int
    state_shift: int


@dataclass(frozen=True)
class CoreImage:
    """A network in the core: its layers, and the bus writes that configure it and fill its memories."""

    params: CoreParams
    layers: tuple[LayerLayout, ...]
    input_size: int
    alternating: bool
    signed_input: bool
    state_bits: int
    writes: tuple[tuple[int, int], ...]

    @property
    def weight_words(self) -> int:
        """Words used in each weight bank."""
        return self.layers[-1].fb_base  # the last layer has no feedback: its weights end there

    def state_address(self, layer: int, unit: int) -> int:
        """The bus address of unit ``unit`` of 0-based state layer ``layer`` (in the current bank)."""
        return address(R_STATE, self.layers[layer].offset + unit)


def accumulator_bits(fp: FixedPointNetwork) -> int:
    """The signed accumulator width the relaxation needs (the readout of a CE network is not the core's)."""
    return max(plan.bound for plan in fp.plans).bit_length() + 1


def core_image(image, params: CoreParams, acc_bits: int) -> CoreImage:
    """The bus writes that put ``image`` (a ``targets.serial.image.BoardImage``) into a core built with ``params``.

    ``acc_bits`` is the accumulator width the network needs (``accumulator_bits``).
    """
    rec, p = image.record, params
    n = len(rec.layers)
    units = [g.units for g in rec.layers]
    problems = []
    if any(g.conv is not None for g in rec.layers):
        problems.append("conv layers, the core runs dense layers only")
    if n > p.MAX_LAYERS:
        problems.append(f"{n} state layers, the core holds MAX_LAYERS = {p.MAX_LAYERS}")
    if sum(units) > p.UDEPTH:
        problems.append(f"{sum(units)} state units, the core holds UDEPTH = {p.UDEPTH}")
    if rec.input_size > p.IDEPTH:
        problems.append(f"{rec.input_size} inputs, the core holds IDEPTH = {p.IDEPTH}")
    if units[0] > p.DDEPTH:
        problems.append(f"{units[0]} units in layer 1, the core's drive memory holds DDEPTH = {p.DDEPTH}")
    if rec.weight_bits > p.WW:
        problems.append(f"{rec.weight_bits}-bit weights, the core's are WW = {p.WW} bits")
    if rec.state_bits > p.SW or rec.input_bits > p.SW:
        problems.append(f"{rec.state_bits}-bit states and {rec.input_bits}-bit inputs, the core's are SW = {p.SW} bits")
    if acc_bits > p.ACC_W:
        problems.append(f"a {acc_bits}-bit accumulator, the core's is ACC_W = {p.ACC_W} bits")
    state_shifts = [g.state_shift for g in rec.layers]
    limit = min(1 << p.SH_W, p.ACC_W) - 1
    if min(state_shifts) < -limit or max(state_shifts) > limit:
        problems.append(f"state shifts in [{min(state_shifts)}, {max(state_shifts)}], the core's are -{limit} to {limit}")
    if acc_bits - min(0, min(state_shifts)) > 64:
        problems.append(f"a left state shift of {-min(state_shifts)} on a {acc_bits}-bit accumulator leaves int64")
    nudge_shift = rec.nudge_shift if rec.classes == 0 else 0  # a CE record's shift is the CE nudge's: not the core's
    shifts = [nudge_shift]
    for tid, (values, _) in image.tensors.items():
        if tid % 4 == SHIFTS and tid < 4 * n:
            shifts += values.tolist()
    if min(shifts) < 0 or max(shifts) > limit:
        problems.append(f"term shifts in [{min(shifts)}, {max(shifts)}], the core's are 0 to {limit}")
    fans = [rec.input_size] + units[:-1]
    groups = [-(-u // p.LANES) for u in units]
    layouts, base = [], 0
    offsets = np.concatenate([[0], np.cumsum(units)]).tolist()
    for i in range(n):
        w_base = base
        base += groups[i] * fans[i]
        fb_base = base
        if i + 1 < n:
            base += groups[i] * units[i + 1]
        layouts.append(LayerLayout(units[i], offsets[i], fans[i], w_base, fb_base, rec.layers[i].state_shift))
    if base > p.WDEPTH:
        problems.append(f"{base} weight words per bank ({p.LANES} lanes), the core holds WDEPTH = {p.WDEPTH}")
    if problems:
        raise CoreFitError("the network does not fit the core: " + "; ".join(problems))

    writes: list[tuple[int, int]] = []
    cfg = n | rec.alternating << 8 | rec.signed_input << 9 | rec.state_bits << 16
    writes += [(address(R_CTRL, CFG), cfg), (address(R_CTRL, INPUT_SIZE), rec.input_size),
               (address(R_CTRL, NUDGE_SHIFT), nudge_shift)]
    for i, g in enumerate(layouts):
        for field, value in ((L_UNITS, g.units), (L_OFF, g.offset), (L_WBASE, g.w_base), (L_FBBASE, g.fb_base),
                             (L_SHIFT, g.state_shift & ((2 << p.SH_W) - 1))):
            writes.append((address(R_LAYER, 8 * i + field), value))
        layer = i + 1
        w = image.tensors[tensor_id(layer, W)][0].reshape(g.units, g.fan_in)
        writes += _lane_tiles(w, g.w_base, p.LANES)
        if i + 1 < n:
            above = layer + 1
            fid = tensor_id(above, FEEDBACK) if rec.untied else tensor_id(above, W)
            f = image.tensors[fid][0].reshape(units[i + 1], g.units)
            writes += _lane_tiles(f.T, g.fb_base, p.LANES)
        bias = image.tensors[tensor_id(layer, BIAS)][0]
        table = image.tensors[tensor_id(layer, SHIFTS)][0].reshape(3, g.units)
        for c in range(g.units):
            writes.append((address(R_BIAS, g.offset + c), int(bias[c]) & 0xFFFFFFFF))
            writes.append((address(R_FWDSH, g.offset + c), int(table[0, c])))
            writes.append((address(R_FBSH, g.offset + c), int(table[1, c])))
    return CoreImage(params, tuple(layouts), rec.input_size, rec.alternating, rec.signed_input, rec.state_bits,
                     tuple(writes))


def _lane_tiles(rows: np.ndarray, base: int, lanes: int) -> list[tuple[int, int]]:
    """Row ``c`` of ``rows`` into bank ``c % lanes``, group ``c // lanes`` after ``base`` (one word per column)."""
    out, (count, width) = [], rows.shape
    for c in range(count):
        g, lane = divmod(c, lanes)
        for j in range(width):
            out.append((address(R_WEIGHT, lane << 16 | (base + g * width + j)), int(rows[c, j]) & 0xFFFF))
    return out


def phase_writes(image: CoreImage, steps: int, beta_q: int, target: int) -> list[tuple[int, int]]:
    """The register writes of a phase: ``steps`` steps, the nudge ``beta_q`` towards unit ``target``."""
    if not 1 <= steps <= 0xFFFF:
        raise CoreFitError(f"steps = {steps}: the core runs 1 to 65535 steps")
    if abs(beta_q) > BETA_LIMIT or abs(beta_q) >= 1 << (image.params.BETA_W - 1):
        raise CoreFitError(f"beta_q = {beta_q}: the core's nudge takes |beta_q| <= {BETA_LIMIT} (|beta| <= 4)")
    if beta_q and not 0 <= target < image.layers[-1].units:
        raise CoreFitError(f"target = {target}: the last layer has {image.layers[-1].units} units")
    return [(address(R_CTRL, STEPS), steps), (address(R_CTRL, BETA_Q), beta_q & 0xFFFFFFFF),
            (address(R_CTRL, TARGET), target if beta_q else 0)]


def input_writes(image: CoreImage, x: np.ndarray) -> list[tuple[int, int]]:
    """Writes of one sample's input integers (16-bit two's complement words)."""
    if x.shape != (image.input_size,):
        raise CoreFitError(f"an input of shape {x.shape}, the network takes ({image.input_size},)")
    return [(address(R_INPUT, j), int(v) & 0xFFFF) for j, v in enumerate(x.tolist())]
