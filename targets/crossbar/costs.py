"""What training costs on the crossbar, and what backprop would cost on the same arrays (docs/crossbar.md, "Cost
accounting").

The target counts what it does, per phase of every training batch: array reads (one MVM per input vector, with
its inputs and outputs), DAC and ADC conversions, device cells read, array writes and pulses, and the digital work
of the periphery (pre-activation sums, activations, the nudge, the update's outer products, the training
algorithm's state). ``backprop_counts`` counts a forward read, a transposed read per layer and an outer-product
update of the same network on the same arrays, as aihwkit and NeuroSim train. ``energy_pj`` and ``latency_ns``
price counts with the tile's ``CostTable`` (the ``[crossbar]`` ``cost_*`` keys).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from hwtoolkit.network.spec import LayerGeometry, NetworkSpec

from .config import CostTable

RELAXED = ("free", "nudged+", "nudged-")
"""The phases of a training batch; the report adds forming the update from their states (``estimate``) and
writing it (``write``: the training algorithm's reads, digital work and pulses)."""
UNCAPPED_SLOTS = 31  # pulse slots priced for a write without a cap (max_pulses = 0): the default cap


@dataclass
class Counts:
    """Operations of one or more batches (conversions and reads per input vector; cells are device pairs)."""

    mvm_forward: int = 0  # input vectors read through an array (weights as stored)
    mvm_transposed: int = 0  # input vectors read through an array transposed
    cells: int = 0  # device pairs read: inputs x outputs per vector (one-hot column reads: outputs)
    dac_forward: int = 0
    adc_forward: int = 0
    dac_transposed: int = 0
    adc_transposed: int = 0
    array_writes: int = 0  # write operations, one per array written
    pulses: float = 0.0  # device pulses (both devices of a differential pair count)
    pulse_slots: int = 0  # stochastic pulse slots generated for a line of a rank-one update (pulsed estimate)
    update_cycles: int = 0  # rank-one update cycles of an array, each as long as a write (pulsed estimate)
    adds: int = 0  # digital additions, subtractions and comparisons
    muls: int = 0  # digital multiplications (and divisions)
    activations: int = 0  # activation functions (and exponentials) evaluated

    def add(self, other: "Counts", times: float = 1) -> "Counts":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + times * getattr(other, f.name))
        return self

    def read(self, transposed: bool, vectors: int, inputs: int, outputs: int, adds: int = 0) -> None:
        """``vectors`` reads of an array with ``inputs`` driven lines and ``outputs`` converted lines."""
        if transposed:
            self.mvm_transposed += vectors
            self.dac_transposed += vectors * inputs
            self.adc_transposed += vectors * outputs
        else:
            self.mvm_forward += vectors
            self.dac_forward += vectors * inputs
            self.adc_forward += vectors * outputs
        self.cells += vectors * inputs * outputs
        self.adds += adds

    def scaled(self, factor: float) -> dict[str, float]:
        return {f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)}


def total(parts: Mapping[str, Counts]) -> Counts:
    out = Counts()
    for c in parts.values():
        out.add(c)
    return out


@dataclass(frozen=True)
class Pricing:
    """What the table needs to know of the device: its conductances, pulse energy and converter bits."""

    table: CostTable
    g_mid_us: float  # mean conductance of a device in the read (uS), both devices of a pair read
    pulse_energy_pj: float
    adc_bits_forward: int  # 0: priced at table.adc_bits
    adc_bits_transposed: int
    write_slots: int  # pulse slots of one array write


def energy_pj(c: Counts | Mapping[str, float], p: Pricing) -> dict[str, float]:
    """Energy by part (pJ): array reads (``V^2 G t`` per device), converters, pulses, digital work."""
    c = c if isinstance(c, Mapping) else dataclasses.asdict(c)
    t = p.table
    per_cell = 2 * t.cost_read_voltage ** 2 * p.g_mid_us * 1e-6 * t.cost_read_ns * 1e-9 * 1e12
    adc = lambda bits: t.cost_adc_fom_fj * 1e-3 * 2 ** (bits or t.cost_adc_bits)  # noqa: E731
    out = {"array": c["cells"] * per_cell,
           "dac": (c["dac_forward"] + c["dac_transposed"]) * t.cost_dac_pj,
           "adc": c["adc_forward"] * adc(p.adc_bits_forward) + c["adc_transposed"] * adc(p.adc_bits_transposed),
           "pulses": c["pulses"] * p.pulse_energy_pj,
           "pulse_trains": c["pulse_slots"] * t.cost_pulse_slot_pj,
           "digital": c["adds"] * t.cost_add_pj + c["muls"] * t.cost_mul_pj + c["activations"] * t.cost_activation_pj}
    out["total"] = sum(out.values())
    return out


def latency_ns(c: Counts | Mapping[str, float], p: Pricing) -> dict[str, float]:
    """Latency by part (ns), every operation one after another (an upper bound: arrays could work in parallel)."""
    c = c if isinstance(c, Mapping) else dataclasses.asdict(c)
    t = p.table
    out = {"reads": (c["mvm_forward"] + c["mvm_transposed"]) * t.cost_mvm_ns,
           "writes": (c["array_writes"] + c["update_cycles"]) * p.write_slots * t.cost_pulse_ns,
           "digital": (c["adds"] + c["muls"] + c["activations"]) * t.cost_digital_op_ns}
    out["total"] = sum(out.values())
    return out


# ---- what one step, one update and backprop do ---------------------------------------------------------------

def _units(geo: LayerGeometry) -> int:
    return math.prod(geo.out_shape)


def _positions(geo: LayerGeometry) -> int:
    """Input vectors per example of a layer's array: one per output position of a convolution, one if dense."""
    return math.prod(geo.conv_shape[1:]) if geo.kind == "conv" else 1


def step_ops(spec: NetworkSpec, nudged: bool) -> Counts:
    """Digital work of one relaxation step for one example (the reads are counted where they happen).

    Per state unit: summing its terms (the input drive or forward read, its bias, the feedback read; layer 1's
    bias is in its drive) and its activation (leaky dynamics: two multiplies and an add more). A nudged step adds
    the nudge: MSE ``u += -beta (s - onehot)``; CE a softmax of the scores (exponential, sum, normalise, minus
    onehot) and ``u += -beta g W_out`` (the readout's reads, with the scores' bias, are counted as reads).
    """
    c = Counts()
    geos = spec.layers
    for i, geo in enumerate(geos):
        units = _units(geo)
        terms = 1 + (i > 0) + (i + 1 < len(geos))
        c.adds += units * (terms - 1)
        c.activations += units
        if spec.dynamics == "leaky":
            c.muls += 2 * units
            c.adds += units
    if nudged:
        last, k = _units(geos[-1]), spec.classes
        if spec.output == "mse":
            c.adds += 2 * last
            c.muls += last
        else:
            c.adds += 2 * k + last
            c.muls += k + last
            c.activations += k
    return c


def _arrays(spec: NetworkSpec) -> list[tuple[int, int, int]]:
    """(output lines, input lines, vectors per example) of every array an update writes: weights, biases (one
    input line, the constant 1) and the CE readout."""
    out = []
    for geo in spec.layers:
        out += [(geo.weight_shape[0], geo.fan_in, _positions(geo)), (geo.weight_shape[0], 1, _positions(geo))]
    if spec.output == "ce":
        out += [(spec.classes, _units(spec.layers[-1]), 1), (spec.classes, 1, 1)]
    return out


def outer_product_counts(spec: NetworkSpec, terms: int, examples: float, batches: float, scheme: str,
                         slots: int) -> Counts:
    """Digital work of forming ``terms`` rank-one terms per example into every array's update.

    ``pulsed`` (aihwkit, NeuroSim): the array forms the outer product from coincident pulse trains, one update
    cycle per example, term and vector; each row and column value is scaled (a multiply) and turned into a train
    of ``slots`` stochastic pulse slots. ``digital``: the outer products are summed over the batch in digital
    multiply-adds, the terms combined and multiplied by the learning rate once per element and batch.
    """
    c = Counts()
    for rows, cols, vectors in _arrays(spec):
        if scheme == "pulsed":
            c.muls += terms * examples * vectors * (rows + cols)
            c.pulse_slots += terms * examples * vectors * (rows + cols) * slots
            c.update_cycles += terms * examples * vectors
        else:
            c.muls += terms * examples * vectors * rows * cols + batches * rows * cols
            c.adds += terms * examples * vectors * rows * cols + batches * (terms - 1) * rows * cols
    return c


def readout_read(c: Counts, spec: NetworkSpec, examples: int, transposed: bool) -> None:
    """One read of the CE readout ``W_out`` for every example (scores, or the nudge's ``g W_out``)."""
    n, k = _units(spec.layers[-1]), spec.classes
    c.read(transposed, examples, k if transposed else n, n if transposed else k, adds=0 if transposed else
           examples * k)


def backprop_counts(spec: NetworkSpec, examples: float) -> dict[str, Counts]:
    """Backprop of the same layers on the same arrays for ``examples`` examples (one batch), by phase.

    Forward: every array read once per example, biases added, activations. Backward: the loss gradient, a
    transposed read of every array but the first (the input needs no gradient) and of the readout, one
    activation-derivative multiply per unit. The estimate (one outer-product term per example) is priced with the
    scheme of the table (``outer_product_counts``); pooling is not counted; the writes are the EP run's (the same
    algorithm writes the same update).
    """
    fwd, bwd = Counts(), Counts()
    geos = spec.layers
    for geo in geos:
        v = examples * _positions(geo)
        fwd.read(False, v, geo.fan_in, geo.weight_shape[0])
        fwd.adds += examples * _units(geo)
        fwd.activations += examples * _units(geo)
        bwd.muls += examples * _units(geo)
        if geo.index > 1:
            bwd.read(True, v, geo.weight_shape[0], geo.fan_in)
    k = spec.classes
    if spec.output == "ce":
        readout_read(fwd, spec, examples, transposed=False)
        readout_read(bwd, spec, examples, transposed=True)
        bwd.activations += examples * k
        bwd.adds += 2 * examples * k
        bwd.muls += examples * k
    else:
        bwd.adds += examples * k
    return {"forward": fwd, "backward": bwd}


def state_words(spec: NetworkSpec) -> int:
    return sum(math.prod(s) for s in spec.state_shapes)


# ---- the ledger ----------------------------------------------------------------------------------------------

@dataclass
class Ledger:
    """Counts of every training batch, by phase, and of the phases no update followed (inference).

    A free phase starts a batch; the update that follows closes it and its phases count as training. A batch
    closed by the next free phase without an update (an evaluation) counts as inference.
    """

    train: dict[str, Counts] = field(default_factory=lambda: {p: Counts() for p in (*RELAXED, "write")})
    inference: Counts = field(default_factory=Counts)
    batches: int = 0
    examples: int = 0
    estimated_examples: int = 0  # examples of the batches whose update came from nudged phases (EP's estimate)
    inference_examples: int = 0
    phases_kept: int = 0  # most phases one training batch relaxed (their states are kept for the update)
    pending: dict[str, Counts] = field(default_factory=dict)
    pending_examples: int = 0
    phase: str = "write"  # where counts go now

    def begin_phase(self, beta: float, examples: int) -> Counts:
        """The counts a phase of ``examples`` examples adds to."""
        if beta == 0:
            self._close_without_update()
            self.pending_examples = examples
            self.phase = "free"
        else:
            self.phase = "nudged+" if beta > 0 else "nudged-"
        return self.current

    @property
    def current(self) -> Counts:
        return self.pending.setdefault(self.phase, Counts())

    @property
    def nudged(self) -> bool:
        return any(p.startswith("nudged") for p in self.pending)

    def begin_write(self) -> Counts:
        """The counts of writing the batch's update."""
        self.phase = "write"
        return self.current

    def close_update(self) -> None:
        """The update is written: the batch's phases count as training."""
        for p, c in self.pending.items():
            self.train[p].add(c)
        if self.pending_examples:
            self.batches += 1
            self.examples += self.pending_examples
            self.estimated_examples += self.pending_examples if self.nudged else 0
            self.phases_kept = max(self.phases_kept, sum(p in RELAXED for p in self.pending))
        self.pending, self.pending_examples = {}, 0

    def _close_without_update(self) -> None:
        for c in self.pending.values():
            self.inference.add(c)
        self.inference_examples += self.pending_examples
        self.pending, self.pending_examples = {}, 0

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint; phases no update has followed yet count as inference there."""
        inference = total({"done": self.inference, **self.pending})
        return {"train": {p: dataclasses.asdict(c) for p, c in self.train.items()},
                "inference": dataclasses.asdict(inference), "batches": self.batches, "examples": self.examples,
                "estimated_examples": self.estimated_examples,
                "inference_examples": self.inference_examples + self.pending_examples,
                "phases_kept": self.phases_kept}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Ledger":
        return cls(train={p: Counts(**state["train"][p]) for p in (*RELAXED, "write")},
                   inference=Counts(**state["inference"]), batches=int(state["batches"]),
                   examples=int(state["examples"]), estimated_examples=int(state["estimated_examples"]),
                   inference_examples=int(state["inference_examples"]), phases_kept=int(state["phases_kept"]))


def report(ledger: Ledger, spec: NetworkSpec, pricing: Pricing, algorithm_words: int) -> dict[str, Any]:
    """Per batch and phase counts, per example energy and latency of EP and of backprop, memory, the table."""
    if not ledger.batches:
        return {}
    b, n = ledger.batches, ledger.examples
    batch = n / b
    t = pricing.table
    estimated_batches = ledger.estimated_examples / batch
    train = {**{p: ledger.train[p] for p in RELAXED},
             "estimate": outer_product_counts(spec, 2, ledger.estimated_examples, estimated_batches,
                                              t.cost_outer_product, pricing.write_slots),
             "write": ledger.train["write"]}
    ep = total(train)
    bp = {**backprop_counts(spec, batch),
          "estimate": outer_product_counts(spec, 1, batch, 1, t.cost_outer_product, pricing.write_slots),
          "write": Counts().add(ledger.train["write"], 1 / b)}  # the same algorithm writes the same update
    bp_total = total(bp)
    per_example = {
        "ep": {"energy_pj": energy_pj(ep.scaled(1 / n), pricing), "latency_ns": latency_ns(ep.scaled(1 / n), pricing),
               "pulses": ep.pulses / n},
        "backprop": {"energy_pj": energy_pj(bp_total.scaled(1 / batch), pricing),
                     "latency_ns": latency_ns(bp_total.scaled(1 / batch), pricing), "pulses": bp_total.pulses / batch},
    }
    if ledger.inference_examples:
        inf = ledger.inference.scaled(1 / ledger.inference_examples)
        per_example["inference"] = {"energy_pj": energy_pj(inf, pricing), "latency_ns": latency_ns(inf, pricing)}
    first = _units(spec.layers[0])
    out_words = spec.classes if spec.output == "ce" else 0
    input_words = math.prod(spec.input_shape)
    return {
        "batches": b, "examples": n,
        "per_batch": {"ep": {**{p: c.scaled(1 / b) for p, c in train.items()}, "total": ep.scaled(1 / b)},
                      "backprop": {**{p: c.scaled(1) for p, c in bp.items()}, "total": bp_total.scaled(1)}},
        "per_example": per_example,
        "ep_over_backprop_energy": per_example["ep"]["energy_pj"]["total"]
        / max(per_example["backprop"]["energy_pj"]["total"], 1e-30),
        "memory_words": {
            "ep": round(batch * (ledger.phases_kept * state_words(spec) + first)) + algorithm_words,
            "backprop": round(batch * (input_words + state_words(spec) + out_words)) + algorithm_words},
        "table": dataclasses.asdict(pricing.table),
    }
