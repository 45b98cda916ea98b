"""The free phase unrolled over T steps as a module that takes images in [0, 1] (NCHW) and returns class scores.

Two forms of the same computation, for the exporters:

* ``FloatFreePhase``: the engine's own step (``hwtoolkit.network.dynamics``) on constant parameters, with
  quantization (if any) written as plain round/clip arithmetic: exports to standard ONNX.
* ``BrevitasFreePhase``: the same dynamics calling the Brevitas layers and quantizers of a
  ``QuantEPNetwork``, so that Brevitas's exporters emit QCDQ or QONNX nodes for weights, biases and states.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hwtoolkit.network import dynamics
from hwtoolkit.network import layers as L
from hwtoolkit.network.activations import get_activation
from hwtoolkit.network.output import logits
from hwtoolkit.network.spec import NetworkSpec

from .network import QuantEPNetwork, _value, constant_rounding


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps = {steps} is invalid: the unrolled free phase needs at least one step")


class FloatFreePhase(nn.Module):
    """T steps of the engine's dynamics from zero states, then the readout, on fixed parameters."""

    def __init__(self, spec: NetworkSpec, params: Mapping[str, torch.Tensor], steps: int,
                 quant: QuantEPNetwork | None = None) -> None:
        super().__init__()
        _check_steps(steps)
        self.spec, self.steps = spec, steps
        self.names = list(params)
        for name, t in params.items():
            self.register_buffer(name, t.detach().clone())
        self.input_map = L.EXACT.input if quant is None else constant_rounding(quant.input_quant)
        self.store = L.EXACT.store if quant is None else quant.store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: getattr(self, n) for n in self.names}
        reads = L.Reads(input=self.input_map, store=self.store)
        drive = dynamics.input_drive(self.spec, params, x, reads)
        states = dynamics.zero_states(self.spec, x.shape[0], x)
        for _ in range(self.steps):
            states = dynamics.step(self.spec, params, drive, states, reads=reads)
        return logits(self.spec, params, states[-1])


class BrevitasFreePhase(nn.Module):
    """T steps of the quantized dynamics through Brevitas modules (for ``export_onnx_qcdq`` / ``export_qonnx``).

    Forward terms call the layers (weights and biases quantized by their proxies); feedback terms use the
    same quantized weights, transposed; every new state goes through its state quantizer.
    """

    def __init__(self, net: QuantEPNetwork, steps: int) -> None:
        super().__init__()
        _check_steps(steps)
        self.net, self.steps, self.spec = net, steps, net.spec
        self.rho = get_activation(net.spec.activation)

    def _weight(self, name: str) -> torch.Tensor:
        layer = self.net.weights[name]
        return _value(layer.quant_weight()) if hasattr(layer, "quant_weight") else layer.weight

    def _forward_term(self, i: int, s_prev: Any) -> tuple[torch.Tensor, Any]:
        """``P(W s + b)`` of state layer ``i`` (0-based) and its max-pool indices."""
        geo = self.spec.layers[i]
        z = _value(self.net.weights[f"w{geo.index}"](s_prev if geo.kind == "conv" else torch.flatten(s_prev, 1)))
        if geo.kind == "dense":
            return z, None
        c = geo.conv
        if c.pool == "max":
            return F.max_pool2d(z, c.pool_size, return_indices=True)
        if c.pool == "avg":
            return F.avg_pool2d(z, c.pool_size), None
        return z, None

    def _feedback(self, i: int, states: list[Any], ctx: Any) -> torch.Tensor:
        """``W_{i+1}^T P^T s_{i+1}`` (``B`` if untied) in the shape of state layer ``i``; ``ctx``: its pool indices."""
        spec = self.spec
        above = spec.layers[i + 1]
        fb = self._weight(f"w{above.index}" if spec.tied else f"fb{above.index}")
        return L.transpose(above, fb, _value(states[i + 1]), ctx)

    def _pre(self, i: int, drive: torch.Tensor, states: list[Any]) -> torch.Tensor:
        """``u`` of state layer ``i`` alone (the alternating schedule)."""
        u = drive if i == 0 else self._forward_term(i, states[i - 1])[0]
        if i + 1 < self.spec.num_state_layers:
            above = self.spec.layers[i + 1]
            needs_ctx = above.kind == "conv" and above.conv.pool == "max"
            u = u + self._feedback(i, states, self._forward_term(i + 1, states[i])[1] if needs_ctx else None)
        return u

    def _pre_all(self, drive: torch.Tensor, states: list[Any]) -> list[torch.Tensor]:
        """``u`` of every layer from the same states, each forward term (and its pool indices) computed once."""
        n = self.spec.num_state_layers
        terms = [(drive, None)] + [self._forward_term(i, states[i - 1]) for i in range(1, n)]
        return [terms[i][0] + self._feedback(i, states, terms[i + 1][1]) if i + 1 < n else terms[i][0]
                for i in range(n)]

    def _settle(self, i: int, u: torch.Tensor) -> Any:
        return self.net.state_quant[i](self.rho(u))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        x_q = self.net.input_quant(dynamics.normalize_input(spec, x))
        drive = self._forward_term(0, x_q)[0]
        # zero states, as quant tensors where states are quantized (a layer's quantized bias needs their scale)
        states: list[Any] = [self.net.state_quant[i](x.new_zeros((x.shape[0], *shape)))
                             for i, shape in enumerate(spec.state_shapes)]
        for _ in range(self.steps):
            if spec.update == "alternating":
                for parity in (0, 1):
                    for i in range(parity, len(states), 2):
                        states[i] = self._settle(i, self._pre(i, drive, states))
            else:
                states = [self._settle(i, u) for i, u in enumerate(self._pre_all(drive, states))]
        if spec.output == "ce":
            return _value(self.net.weights["w_out"](torch.flatten(states[-1], 1)))
        return torch.flatten(_value(states[-1]), 1)
