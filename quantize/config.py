"""The ``[quant]`` table of an experiment: bit widths, scale kind and granularity of a quantized EP network.

Kept free of Brevitas so that loading a config never imports it; ``quantize.network`` builds the quantizers.
"""

from __future__ import annotations

from dataclasses import dataclass

SCALES = ("float", "pow2")
GRANULARITIES = ("per_tensor", "per_channel")


class QuantConfigError(ValueError):
    """A ``quant.*`` field has an invalid value."""


def _require(ok: bool, name: str, value: object, valid: str) -> None:
    if not ok:
        raise QuantConfigError(f"quant.{name} = {value!r} is invalid: expected {valid}")


@dataclass(frozen=True)
class QuantConfig:
    """How an EP network is quantized; all zeros (the default) is the float network.

    * ``weight_bits``: signed integer weights (narrow range, ``±(2^(b-1) - 1)``), readout included; 0 = float.
    * ``state_bits``: unsigned states on ``[0, 1]`` with a constant scale; 0 = float states.
    * ``input_bits``: the network input after normalisation, with a constant scale from its known range.
    * ``scale``: ``"float"`` scales, or ``"pow2"`` (fixed point: every scale is ``2^-f``).
    * ``granularity``: one weight scale per tensor, or one per output channel (row).
    * ``bias_bits``: biases in the accumulator's scale (input scale x weight scale), when weights and
      states are both quantized; otherwise biases stay float.
    """

    weight_bits: int = 0
    state_bits: int = 0
    input_bits: int = 8
    bias_bits: int = 32
    scale: str = "pow2"
    granularity: str = "per_tensor"

    def __post_init__(self) -> None:
        _require(self.weight_bits == 0 or 2 <= self.weight_bits <= 16, "weight_bits", self.weight_bits,
                 "0 (float) or an integer in [2, 16]")
        _require(self.state_bits == 0 or 1 <= self.state_bits <= 16, "state_bits", self.state_bits,
                 "0 (float) or an integer in [1, 16]")
        _require(2 <= self.input_bits <= 16, "input_bits", self.input_bits, "an integer in [2, 16]")
        _require(8 <= self.bias_bits <= 32, "bias_bits", self.bias_bits, "an integer in [8, 32]")
        _require(self.scale in SCALES, "scale", self.scale, f"one of {SCALES}")
        _require(self.granularity in GRANULARITIES, "granularity", self.granularity, f"one of {GRANULARITIES}")

    @property
    def enabled(self) -> bool:
        """Whether anything is quantized (weights or states)."""
        return self.weight_bits > 0 or self.state_bits > 0

    @property
    def quantized_bias(self) -> bool:
        """Biases are integers in the accumulator's scale only when both factors of every product are."""
        return self.weight_bits > 0 and self.state_bits > 0

    @property
    def fixed_point(self) -> bool:
        """Whether the integer-only model (``quantize.fixed_point``) can run this network."""
        return self.weight_bits > 0 and self.state_bits > 0 and self.scale == "pow2"

    def describe(self) -> str:
        """A short tag such as ``w8 s8 pow2 per_tensor`` (``float`` when nothing is quantized)."""
        if not self.enabled:
            return "float"
        w = f"w{self.weight_bits}" if self.weight_bits else "w-float"
        s = f"s{self.state_bits}" if self.state_bits else "s-float"
        return f"{w} {s} in{self.input_bits} {self.scale} {self.granularity}"
