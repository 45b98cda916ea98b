"""Analytic FLOP counts of EP's matmul and convolution work, per image, as the code in this package does it.

Counts follow ``torch.utils.flop_counter``: a multiply-add is 2 FLOPs, and only matmuls and convolutions
(forward, transposed, weight gradient) are counted. Elementwise work (biases, activations, pooling and
unpooling, the loss gradient, scaling) is ignored: it is memory-bound and small next to the maps.
A benchmark divides these counts by measured time to report achieved FLOP/s against a matmul peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import LayerGeometry, NetworkSpec

NUDGED_PHASES = {"symmetric": 2, "one_sided": 1, "random_sign": 1}
"""Nudged phases per training batch for each EP estimator (each also runs one free phase)."""


def layer_macs(geo: LayerGeometry) -> int:
    """Multiply-adds of one layer's map ``W * s_{l-1}`` per image (its transpose and weight gradient cost the same).

    A convolution costs one ``in_channels x kernel x kernel`` dot product per output of the conv grid
    (before pooling); a dense layer one product per weight.
    """
    if geo.kind == "dense":
        return math.prod(geo.weight_shape)
    return math.prod(geo.conv_shape) * math.prod(geo.weight_shape[1:])


def _max_pooled(geo: LayerGeometry) -> bool:
    return geo.kind == "conv" and geo.conv.pool == "max"


def _readout_flops(spec: NetworkSpec) -> int:
    """FLOPs of one product with the CE readout ``W_out`` per image (0 for an MSE output, which has none)."""
    shape = spec.readout_shape
    return 0 if shape is None else 2 * math.prod(shape)


@dataclass(frozen=True)
class StepFlops:
    """Per-image matmul/conv FLOPs of the parts of an EP phase and update (multiply-add = 2; elementwise ignored).

    ``step`` is one relaxation step; a phase of ``T`` steps costs ``T * step + phase_end``, and the drive
    is computed once per input (the reference target keeps it across a batch's phases).
    """

    drive: int  # P(W_1 x): layer 1's forward map of the input
    forward: int  # one step: forward maps of layers 2..L
    feedback: int  # one step: transposes (W^T, or B when untied) of layers 2..L
    pool_context: int  # one step: convolutions recomputed for max-pool indices (alternating updates only)
    readout: int  # one step: CE logits and the nudge term dL/ds_L through W_out (nudged CE steps only)
    phase_end: int  # once per phase: the logits ``finish`` reports (CE only)
    update: int  # ep_update: weight gradients of both phases, their max-pool indices, the readout gradients

    @property
    def step(self) -> int:
        """All FLOPs of one relaxation step."""
        return self.forward + self.feedback + self.pool_context + self.readout


def step_flops(spec: NetworkSpec, nudged: bool) -> StepFlops:
    """Per-image FLOPs of a (free or nudged) step of ``spec``, its drive, phase end and EP update.

    Tied and untied networks cost the same (``B`` has ``W``'s shape). With alternating updates each layer's
    feedback is computed apart from the forward map below it, so a max-pooled layer above reruns its
    convolution for the pool indices (``layers.pool_context``); the synchronous step reuses them.
    """
    geos = spec.layers
    above = geos[1:]
    flops = [2 * layer_macs(g) for g in geos]
    forward = sum(flops[1:])
    pool_context = sum(2 * layer_macs(g) for g in above if _max_pooled(g)) if spec.update == "alternating" else 0
    readout = 2 * _readout_flops(spec) if nudged else 0
    return StepFlops(drive=flops[0], forward=forward, feedback=forward, pool_context=pool_context,
                     readout=readout, phase_end=_readout_flops(spec), update=update_flops(spec))


def update_flops(spec: NetworkSpec) -> int:
    """Per-image FLOPs of ``energy.ep_update``: what its code does for the two phases it combines.

    Conv layers take one weight gradient per phase (plus, if max-pooled, one forward conv per phase for the
    pool indices). Dense layers form the difference in one matmul: ``(s_a - s_b)^T x`` for layer 1 (one
    product), ``[s_a, -s_b]^T [p_a; p_b]`` above it (two). The CE readout gradient is taken per phase.
    """
    total = 0
    for geo in spec.layers:
        macs = layer_macs(geo)
        if geo.kind == "conv":
            total += 2 * 2 * macs + (2 * 2 * macs if _max_pooled(geo) else 0)
        else:
            total += 2 * macs * (1 if geo.index == 1 else 2)
    return total + 2 * _readout_flops(spec)


def batch_flops(spec: NetworkSpec, free_steps: int, nudged_steps: int, estimator: str = "symmetric",
                batch: int = 1) -> int:
    """Total FLOPs of one training batch: drive once, the free phase, the estimator's nudged phases, the update.

    ``free_steps`` and ``nudged_steps`` are the steps each phase actually ran (fewer than configured when
    phases stop early). ``estimator`` is "symmetric" (two nudged phases) or "one_sided" / "random_sign" (one).
    """
    if estimator not in NUDGED_PHASES:
        raise ValueError(f"estimator = {estimator!r} is invalid: expected one of {sorted(NUDGED_PHASES)} "
                         "(bptt has no analytic count here)")
    for name, value in (("free_steps", free_steps), ("nudged_steps", nudged_steps)):
        if value < 0:
            raise ValueError(f"{name} = {value} is invalid: expected an integer >= 0")
    if batch < 1:
        raise ValueError(f"batch = {batch} is invalid: expected an integer >= 1")
    phases = NUDGED_PHASES[estimator]
    free, nudged = step_flops(spec, nudged=False), step_flops(spec, nudged=True)
    per_image = (free.drive + free_steps * free.step + phases * nudged_steps * nudged.step
                 + (1 + phases) * free.phase_end + free.update)
    return batch * per_image
