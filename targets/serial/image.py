"""What a board holds for a fixed-point network: the CONFIGURE record and every tensor, by tensor id.

Built from ``quantize.fixed_point.FixedPointNetwork``: raw integer weights and biases, and per-row shift tables
that align each term to its layer's accumulator (docs/board_protocol.md, section 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from firmware_interface.protocol import BETA_FRAC, BIAS, FEEDBACK, MAX_SHIFT, POOL_CODES, SHIFTS, W, ConvRecord, \
    LayerRecord, NetworkRecord, tensor_id
from firmware_interface.tensor import I8, I16, I32, U8, U16
from hwtoolkit.network.spec import LayerGeometry
from quantize.fixed_point import FixedPointNetwork, FixedTensor, pool_shift


class ImageError(ValueError):
    """The fixed-point network cannot be held by the board protocol (a shift or width out of range)."""


def _rows(frac: torch.Tensor, rows: int) -> np.ndarray:
    f = frac.numpy().astype(np.int64)
    return np.full(rows, int(f)) if f.ndim == 0 else f


def _shifts(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > MAX_SHIFT):
        raise ImageError(f"{what} needs shifts in [{values.min()}, {values.max()}]; the protocol allows 0 to "
                         f"{MAX_SHIFT}")
    return values.astype(np.uint8)


def _bias(b: FixedTensor, name: str) -> np.ndarray:
    values = b.data.numpy().reshape(-1)
    if values.size and (values.min() < -2**31 or values.max() > 2**31 - 1):
        raise ImageError(f"bias {name} has integers in [{values.min()}, {values.max()}], beyond the i32 a board "
                         f"holds; lower quant.bias_bits")
    return values


def state_code(bits: int) -> int:
    return U8 if bits <= 8 else U16


def input_code(bits: int, signed: bool) -> int:
    if signed:
        return I8 if bits <= 8 else I16
    return U8 if bits <= 8 else U16


@dataclass(frozen=True)
class BoardImage:
    """The CONFIGURE record and ``tensor id -> (flat integers, wire dtype code)`` of one network."""

    record: NetworkRecord
    tensors: dict[int, tuple[np.ndarray, int]]
    state_frac: int
    score_frac: int
    input_code: int
    state_code: int

    def formats(self) -> tuple:
        """Everything but the weight and bias values: when it changes the board is configured afresh."""
        return (self.record, tuple((tid, t.tobytes()) for tid, (t, _) in sorted(self.tensors.items())
                                   if tid % 4 == SHIFTS))

    @property
    def weight_ids(self) -> list[int]:
        """Ids of the weight and bias tensors (the ones updates change)."""
        return [tid for tid in sorted(self.tensors) if tid % 4 != SHIFTS]


def nudge_shifts(fp: FixedPointNetwork, ce_nudge: bool = True) -> tuple[int, int]:
    """CONFIGURE's ``nudge_shift`` and ``softmax_shift``: MSE (left shift, 0), CE (right shift, F_out + 9).

    Without ``ce_nudge`` (a board before capability 8) a CE record carries 0 and 0, which such a board requires.
    """
    acc_frac = fp.plans[-1].acc_frac
    if fp.spec.output == "mse":
        return acc_frac - BETA_FRAC - fp.state_frac, 0
    if not ce_nudge:
        return 0, 0
    constants = fp.ce_nudge_constants()
    return constants["nudge_shift"], constants["softmax_shift"]


def conv_record(geo: LayerGeometry) -> ConvRecord | None:
    """The conv block of a layer's record (None for a dense layer); no pooling travels as pool_size 1."""
    if geo.kind != "conv":
        return None
    c = geo.conv
    return ConvRecord(*geo.in_shape, c.channels, c.kernel, c.stride, c.padding, POOL_CODES[c.pool],
                      1 if c.pool == "none" else c.pool_size)


def board_image(fp: FixedPointNetwork, max_batch: int, ce_nudge: bool = True) -> BoardImage:
    """The board's view of ``fp``; ``ImageError`` if a value does not fit the protocol.

    ``ce_nudge``: the board runs CE nudges (capability 8), so a CE record carries their shifts.
    """
    spec, p = fp.spec, fp.params
    fs, fx = fp.state_frac, int(fp.input_format.frac)
    if fs != fp.state_bits:
        raise ImageError(f"the state format has {fs} fractional bits for {fp.state_bits}-bit states; the board "
                         f"protocol needs them equal (states on [0, 1))")
    weight_bits = max(p[f"w{g.index}"].bits for g in spec.layers)
    wcode = I8 if weight_bits <= 8 else I16
    n = spec.num_state_layers
    tensors: dict[int, tuple[np.ndarray, int]] = {}
    layers = []
    for i, g in enumerate(spec.layers):
        layer = g.index
        plan = fp.plans[i]
        w: FixedTensor = p[f"w{layer}"]
        rows = w.data.shape[0]  # units of a dense layer, channels of a conv layer
        a = pool_shift(g)
        table = np.zeros((3, rows), np.int64)
        table[0] = plan.acc_frac - _rows(w.frac, rows) - (fx if i == 0 else fs) - a
        if i > 0:
            feedback = p[f"w{layer}"] if spec.tied else p[f"fb{layer}"]
            table[1] = fp.plans[i - 1].acc_frac - _rows(feedback.frac, rows) - fs - a
            if not spec.tied:
                tensors[tensor_id(layer, FEEDBACK)] = (feedback.data.numpy().reshape(-1), wcode)
        tensors[tensor_id(layer, W)] = (w.data.numpy().reshape(-1), wcode)
        tensors[tensor_id(layer, BIAS)] = (_bias(p[f"b{layer}"], f"b{layer}"), I32)
        tensors[tensor_id(layer, SHIFTS)] = (_shifts(table, f"layer {layer}").reshape(-1), U8)
        if a and table[0].max() + a > MAX_SHIFT:
            raise ImageError(f"layer {layer}'s bias needs a shift of {table[0].max() + a}; the protocol allows 0 to "
                             f"{MAX_SHIFT}")
        layers.append(LayerRecord(math.prod(g.out_shape), plan.state_shift, conv_record(g)))
    classes = 0
    if spec.output == "ce":
        w = p["w_out"]
        classes = w.data.shape[0]
        aligned_w, aligned_b = fp.readout
        bound = int(aligned_w.abs().sum(1).max()) * ((1 << fp.state_bits) - 1) + int(aligned_b.abs().max())
        if bound > 2**31 - 1:
            raise ImageError(f"class scores can reach {bound}, beyond the i32 that READ_STATES carries")
        out = fp.score_frac - _rows(w.frac, classes) - fs
        tensors[tensor_id(n + 1, W)] = (w.data.numpy().reshape(-1), wcode)
        tensors[tensor_id(n + 1, BIAS)] = (_bias(p["b_out"], "b_out"), I32)
        tensors[tensor_id(n + 1, SHIFTS)] = (_shifts(out, "the readout").reshape(-1), U8)
    nudge, softmax = nudge_shifts(fp, ce_nudge)
    for value, what in ((nudge, "the nudge needs a shift"), (softmax, "the softmax needs an exponent shift")):
        if not 0 <= value <= MAX_SHIFT:
            raise ImageError(f"{what} of {value}; the protocol allows 0 to {MAX_SHIFT}")
    for layer, g in enumerate(layers, start=1):
        if abs(g.state_shift) > MAX_SHIFT:
            raise ImageError(f"layer {layer} needs a state shift of {g.state_shift}; the protocol allows "
                             f"-{MAX_SHIFT} to {MAX_SHIFT}")
    fmt = fp.input_format
    record = NetworkRecord(tuple(layers), math.prod(spec.input_shape), weight_bits, fp.state_bits, fmt.bits, max_batch,
                           alternating=spec.update == "alternating", untied=not spec.tied, signed_input=fmt.signed,
                           classes=classes, nudge_shift=nudge, softmax_shift=softmax)
    return BoardImage(record, tensors, fs, fp.score_frac, input_code(fmt.bits, fmt.signed), state_code(fp.state_bits))
