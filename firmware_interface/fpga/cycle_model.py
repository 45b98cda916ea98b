"""The core's cycle count for a phase, from its controller (docs/fpga.md, "Cycle model").

A layer costs 2 cycles (start, next) plus, per group of ``LANES`` units, a forward loop over its fan-in
(layers 2..L), a feedback loop over the layer above (layers 1..L-1), each ``n + 4`` cycles, and a write-back
of the group's ``m`` units in ``m + 5`` cycles. Layer 1's forward term (the drive) is computed once per input,
as a layer of its own with a forward loop over the inputs.
"""

from __future__ import annotations

from .layout import CoreImage

MAC_OVERHEAD = 4  # a loop's pipeline: operands, products, shifted terms, accumulate
WRITEBACK_OVERHEAD = 5  # parameters, total, round and clamp, write, and the loop's end
LAYER_OVERHEAD = 2  # start and next


def _layer(units: int, lanes: int, fan_in: int | None, above: int | None) -> int:
    cycles = LAYER_OVERHEAD
    for c0 in range(0, units, lanes):
        if fan_in is not None:
            cycles += fan_in + MAC_OVERHEAD
        if above is not None:
            cycles += above + MAC_OVERHEAD
        cycles += min(lanes, units - c0) + WRITEBACK_OVERHEAD
    return cycles


def drive_cycles(image: CoreImage) -> int:
    """Cycles of layer 1's drive (after new inputs or parameters)."""
    first = image.layers[0]
    return _layer(first.units, image.params.LANES, first.fan_in, None)


def step_cycles(image: CoreImage) -> int:
    """Cycles of one step (the same for the synchronous and the alternating schedule)."""
    layers, lanes = image.layers, image.params.LANES
    return sum(_layer(g.units, lanes, g.fan_in if i else None, layers[i + 1].units if i + 1 < len(layers) else None)
               for i, g in enumerate(layers))


def phase_cycles(image: CoreImage, steps: int, new_drive: bool) -> int:
    """Cycles from start to done of a phase of ``steps`` steps."""
    return steps * step_cycles(image) + (drive_cycles(image) if new_drive else 0)
