"""Brevitas quantizers for EP networks, composed with ``.let`` from Brevitas's own (never subclassed).

States and inputs have a known range, so their scales are constants: nothing is calibrated and nothing
drifts across relaxation steps. Weight scales follow the weights (absolute max, per tensor or per row).
"""

from __future__ import annotations

from brevitas.inject.enum import ScalingImplType
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8ActPerTensorFloat,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFloat,
    Int32Bias,
    Uint8ActPerTensorFixedPoint,
    Uint8ActPerTensorFloat,
)

from .config import QuantConfig


def weight_quantizer(cfg: QuantConfig) -> type:
    """Signed narrow-range weights of ``cfg.weight_bits`` bits, float or power-of-two scales."""
    base = Int8WeightPerTensorFixedPoint if cfg.scale == "pow2" else Int8WeightPerTensorFloat
    return base.let(bit_width=cfg.weight_bits, scaling_per_output_channel=cfg.granularity == "per_channel")


def range_quantizer(cfg: QuantConfig, bits: int, signed: bool, max_abs: float) -> type:
    """A constant-scale quantizer for values known to lie in ``[0, max_abs]`` (or ``[-max_abs, max_abs]``).

    The scale is Brevitas's ``max_abs / (2^b - 1)`` unsigned (``max_abs / 2^(b-1)`` signed), rounded to a
    power of two for ``pow2``: an unsigned 8-bit state on [0, 1] has scale 2^-8 (values 0 .. 255/256).
    """
    if signed:
        base = Int8ActPerTensorFixedPoint if cfg.scale == "pow2" else Int8ActPerTensorFloat
    else:
        base = Uint8ActPerTensorFixedPoint if cfg.scale == "pow2" else Uint8ActPerTensorFloat
    return base.let(bit_width=bits, scaling_impl_type=ScalingImplType.CONST, scaling_init=float(max_abs))


def bias_quantizer(cfg: QuantConfig) -> type:
    """Biases as ``bias_bits``-bit integers in the scale of the products they are added to."""
    return Int32Bias.let(bit_width=cfg.bias_bits)
