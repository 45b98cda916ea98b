"""A quantized EP network built from Brevitas layers, run by the engine's own dynamics.

Every weight layer of the spec is a ``QuantLinear`` or ``QuantConv2d`` whose float weights are the shadow
weights that EP updates (quantization-aware training); the dynamics read the quantized weights, and each
state is stored through a constant-scale ``QuantIdentity`` after the activation. The same modules serve the
exported graphs (``quantize.unrolled``) and give the fixed-point model its integers (``quantize.fixed_point``).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import brevitas.nn as qnn
import torch
from torch import nn

from hwtoolkit.network import layers as L
from hwtoolkit.network.output import nudge_force
from hwtoolkit.network.parameters import check_parameters
from hwtoolkit.network.spec import LayerGeometry, NetworkSpec

from .config import QuantConfig
from .quantizers import bias_quantizer, range_quantizer, weight_quantizer


def input_range(spec: NetworkSpec) -> tuple[bool, float]:
    """``(signed, max |x|)`` of the normalised input, from images in [0, 1] and the spec's mean and std."""
    if not spec.input_mean:
        return False, 1.0
    ends = [abs((v - m) / s) for m, s in zip(spec.input_mean, spec.input_std) for v in (0.0, 1.0)]
    return True, max(ends)


def constant_rounding(quantizer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A constant-scale Brevitas quantizer as plain arithmetic: ``clamp(round(v / scale), lo, hi) * scale``.

    Brevitas computes the same expression; in plain ops it costs a fraction of a module call (the state
    quantizer runs once per layer and step) and exports to standard ONNX (``Div``, ``Round``, ``Clip``, ``Mul``).
    """
    with torch.no_grad():
        qt = quantizer(torch.zeros(1, device=_device_of(quantizer)))
    bits, signed, scale = int(qt.bit_width), bool(qt.signed), float(qt.scale)
    low, high = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0 ** bits - 1)

    def quantize(v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(v / scale), low, high) * scale
    return quantize


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _value(t: object) -> torch.Tensor:
    """The float tensor behind a Brevitas quant tensor (or the tensor itself)."""
    return t.value if hasattr(t, "value") else t


class QuantEPNetwork(nn.Module):
    """Brevitas layers for every parameter of ``spec``; ``effective_params()`` feeds the engine's dynamics."""

    def __init__(self, spec: NetworkSpec, cfg: QuantConfig) -> None:
        super().__init__()
        if not cfg.enabled:
            raise ValueError("QuantEPNetwork needs quant.weight_bits or quant.state_bits > 0")
        self.spec, self.cfg = spec, cfg
        signed, max_abs = input_range(spec)
        self.input_quant = qnn.QuantIdentity(act_quant=range_quantizer(cfg, cfg.input_bits, signed, max_abs),
                                             return_quant_tensor=True)
        self.state_quant = nn.ModuleList(
            qnn.QuantIdentity(act_quant=range_quantizer(cfg, cfg.state_bits, False, 1.0), return_quant_tensor=True)
            if cfg.state_bits else nn.Identity()
            for _ in spec.layers)
        self.weights = nn.ModuleDict()
        for g in spec.layers:
            self.weights[f"w{g.index}"] = self._layer(g, bias=True)
            if not spec.tied and g.index >= 2:
                self.weights[f"fb{g.index}"] = self._layer(g, bias=False)
        if spec.readout_shape is not None:
            classes, units = spec.readout_shape
            self.weights["w_out"] = self._linear(units, classes, bias=True)
        self.eval()  # constant scales: train and eval mode quantize alike; eval skips Brevitas's training paths
        self.requires_grad_(False)
        self.state_rounding = [constant_rounding(q) if cfg.state_bits else None for q in self.state_quant]

    def _linear(self, fan_in: int, out: int, bias: bool) -> nn.Module:
        cfg = self.cfg
        if not cfg.weight_bits:
            return nn.Linear(fan_in, out, bias=bias)
        return qnn.QuantLinear(fan_in, out, bias=bias, weight_quant=weight_quantizer(cfg),
                               bias_quant=bias_quantizer(cfg) if bias and cfg.quantized_bias else None)

    def _layer(self, g: LayerGeometry, bias: bool) -> nn.Module:
        if g.kind == "dense":
            return self._linear(g.fan_in, g.out_shape[0], bias)
        c, cfg = g.conv, self.cfg
        if not cfg.weight_bits:
            return nn.Conv2d(g.in_shape[0], c.channels, c.kernel, c.stride, c.padding, bias=bias)
        return qnn.QuantConv2d(g.in_shape[0], c.channels, c.kernel, c.stride, c.padding, bias=bias,
                               weight_quant=weight_quantizer(cfg),
                               bias_quant=bias_quantizer(cfg) if bias and cfg.quantized_bias else None)

    # -- shadow weights ---------------------------------------------------------------------------------

    def shadow(self) -> dict[str, torch.Tensor]:
        """The float shadow weights by parameter name (the module's own tensors: updating them updates it)."""
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.weights.items():
            out[name] = layer.weight.data
            if layer.bias is not None:
                out["b" + name[1:]] = layer.bias.data  # w3 -> b3, w_out -> b_out
        return out

    def load_shadow(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy a full parameter dictionary into the shadow weights."""
        check_parameters(self.spec, weights)
        for name, t in self.shadow().items():
            t.copy_(weights[name].to(t.device, t.dtype))

    # -- what the dynamics read -------------------------------------------------------------------------

    def _input_probe(self, index: int, like: torch.Tensor) -> object:
        """A quant tensor carrying the scale of what layer ``index`` (1-based; 0 = readout) reads."""
        spec = self.spec
        if index == 1:
            return self.input_quant(like.new_zeros((1, *spec.layers[0].in_shape)))
        below = spec.num_state_layers if index == 0 else index - 1
        shape = spec.layers[below - 1].out_shape
        return self.state_quant[below - 1](like.new_zeros((1, math.prod(shape)) if index == 0 else (1, *shape)))

    def quant_tensors(self) -> dict[str, object]:
        """Every parameter as the network uses it: Brevitas quant tensors where quantized, else the float tensor.

        A quantized bias takes the scale of its products: the weight scale times that of what the layer reads.
        """
        out: dict[str, object] = {}
        for name, layer in self.weights.items():
            qw = layer.quant_weight() if self.cfg.weight_bits else layer.weight
            out[name] = qw
            if layer.bias is None:
                continue
            if self.cfg.quantized_bias:
                index = 0 if name == "w_out" else int(name[1:])
                out["b" + name[1:]] = layer.bias_quant(layer.bias, self._input_probe(index, layer.weight), qw)
            else:
                out["b" + name[1:]] = layer.bias  # w3 -> b3, w_out -> b_out
        return out

    @torch.no_grad()
    def effective_params(self) -> dict[str, torch.Tensor]:
        """The parameters as the quantized network uses them: dequantized weights and biases."""
        shapes = self.spec.parameter_shapes()
        return {n: _value(t).detach().reshape(shapes[n]).clone() for n, t in self.quant_tensors().items()}

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised input as layer 1 reads it."""
        return _value(self.input_quant(x))

    def store(self, index: int, s: torch.Tensor) -> torch.Tensor:
        """State layer ``index`` (0-based) as it is kept: rounded to the state format (by the state
        quantizer's constants, see ``constant_rounding``)."""
        rounding = self.state_rounding[index]
        return s if rounding is None else rounding(s)

    def reads(self) -> L.Reads:
        """The engine hooks that make ``hwtoolkit.network.dynamics`` run this quantized network."""
        return L.Reads(input=self.quantize_input, store=self.store, nudge=self.nudge)

    # a fixed-point CE network nudges through the integer softmax, as a board does; False: torch's softmax
    integer_softmax = True

    def nudge(self, spec: NetworkSpec, params: Mapping[str, torch.Tensor], s_last: torch.Tensor,
              scores: torch.Tensor, y: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
        """The nudging force: a fixed-point CE network's is the fixed-point model's (integer softmax, rounded to
        the last accumulator), so the reference target trains what a board trains; otherwise ``nudge_force``."""
        if spec.output != "ce" or not self.cfg.fixed_point or not self.integer_softmax:
            return nudge_force(spec, params, s_last, scores, y, beta)
        from .fixed_point import BETA_FRAC

        if torch.is_tensor(beta) and beta.numel() != 1:
            raise ValueError(f"the integer CE nudge needs one beta for the batch, not {tuple(beta.shape)}")
        fp = self._fixed_point()
        acc_frac = fp.plans[-1].acc_frac
        s_int = torch.round(s_last.detach().flatten(1).double().cpu() * 2.0 ** fp.state_frac).long()
        onehot = nn.functional.one_hot(y.cpu(), spec.classes).long() << fp.state_frac
        force = fp.nudge(s_int, onehot, round(float(beta) * (1 << BETA_FRAC)), acc_frac)
        return (force.double() * 2.0 ** -acc_frac).to(s_last.dtype).to(s_last.device).view_as(s_last)

    def _fixed_point(self):
        """The fixed-point model of the current weights and quantizers, rebuilt only when one of them changed:
        compared by value with those it was built from (an update may bypass autograd's version counters)."""
        from .fixed_point import FixedPointNetwork

        state = self.state_dict()
        cached = self.__dict__.get("_fixed_point_cache")
        if cached is not None and cached[0].keys() == state.keys() \
                and all(torch.equal(cached[0][k], v) for k, v in state.items()):
            return cached[1]
        model = FixedPointNetwork.from_quant(self)
        self.__dict__["_fixed_point_cache"] = ({k: v.detach().clone() for k, v in state.items()}, model)
        return model
