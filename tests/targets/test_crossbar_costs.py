"""The crossbar's cost accounting (targets/crossbar/costs.py; docs/crossbar.md, "Cost accounting").

The counts of small networks are checked against hand counts written out below, for EP (every phase, the
estimate and the write), for backprop on the same arrays, with noisy reads (the drive read at every step, each
read averaged), for the CE readout, a convolution and the transfer reads of Tiki-Taka; the energy of known counts
against the table's arithmetic; the ledger against evaluation phases and a device-state round trip.
"""

from __future__ import annotations

import math

import pytest
import torch

import targets
from targets import Update
from targets.base import TargetError
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from targets.crossbar import costs

F64 = torch.float64
# 4 inputs -> 3 hidden -> 2 outputs (MSE: the output layer is a state layer)
TINY = NetworkSpec(input_shape=(1, 2, 2), hidden=(3,), classes=2, output="mse")
BATCH, T1, T2 = 5, 3, 2


def _target(spec=TINY, **options):
    t = targets.open("crossbar", spec, dtype="float64", **options)
    t.program(init_parameters(spec, 1))
    return t


def _batch(spec=TINY, n=BATCH, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *spec.input_shape, generator=gen, dtype=F64), torch.randint(0, spec.classes, (n,),
                                                                                   generator=gen)


def _train_batch(t, x, y, delta=0.01):
    free = t.relax(x, T1)
    t.relax(x, T2, 0.5, y, init=free)
    t.relax(x, T2, -0.5, y, init=free)
    t.apply_update(Update({n: delta * torch.ones_like(w) for n, w in t.read_weights().items()}))


def _counts(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


def test_ep_counts_of_a_tiny_network_equal_the_hand_count():
    """Per batch of 5, symmetric EP with 3 free and 2 nudged steps, reads without noise.

    Reads: the input drive W1 x (4 -> 3) once per batch (read once, kept for the phases); every step reads W2
    (3 -> 2) forward and transposed for every example. Free: forward vectors 5 + 3*5 = 20, transposed 15;
    cells 5*4*3 + 15*3*2 + 15*2*3 = 240; DAC forward 5*4 + 15*3 = 65, ADC forward 5*3 + 15*2 = 45; DAC
    transposed 15*2 = 30, ADC transposed 15*3 = 45. Digital per step and example: layer 1 sums drive and feedback
    (1 add x 3 units), layer 2 forward and bias (1 add x 2 units): 5 adds, 5 activations; plus the drive's bias,
    3 adds per example once: free adds 5*3*5 + 15 = 90, activations 75. A nudged phase: 10 forward, 10
    transposed, cells 120; the MSE nudge adds 2 adds and 1 multiply per output unit and step: adds (5 + 4)*2*5 =
    90, muls 2*2*5 = 20, activations 50. Estimate, pulsed (the default): two rank-one terms per example into the
    arrays w1 (3 x 4), b1 (3 x 1), w2 (2 x 3), b2 (2 x 1), whose rows and columns add up to 19 values, each scaled
    (muls 2*5*19 = 190) and turned into 31 pulse slots (190*31 = 5890), in 2*5*4 = 40 update cycles. Write: one
    write per array (4).
    """
    t = _target()
    _train_batch(t, *_batch())
    per_batch = t.cost_report()["per_batch"]["ep"]
    assert _counts(per_batch["free"]) == {"mvm_forward": 20, "mvm_transposed": 15, "cells": 240, "dac_forward": 65,
                                          "adc_forward": 45, "dac_transposed": 30, "adc_transposed": 45, "adds": 90,
                                          "activations": 75}
    nudged = {"mvm_forward": 10, "mvm_transposed": 10, "cells": 120, "dac_forward": 30, "adc_forward": 20,
              "dac_transposed": 20, "adc_transposed": 30, "adds": 90, "muls": 20, "activations": 50}
    assert _counts(per_batch["nudged+"]) == nudged and _counts(per_batch["nudged-"]) == nudged
    assert _counts(per_batch["estimate"]) == {"pulse_slots": 5890, "muls": 190, "update_cycles": 40}
    assert _counts(per_batch["write"]) == {"array_writes": 4}
    assert per_batch["total"]["cells"] == 480 and per_batch["total"]["adds"] == 90 * 3


def test_digital_outer_products_are_multiply_adds_per_element_and_example():
    """Digital: 2 terms x 5 examples x 23 elements (weights and biases) multiply-adds, then per element one
    difference and one learning-rate multiply: adds 230 + 23, muls 230 + 23. Backprop: one term, no difference:
    adds 115, muls 115 + 23."""
    t = _target(cost_outer_product="digital")
    _train_batch(t, *_batch())
    per_batch = t.cost_report()["per_batch"]
    assert _counts(per_batch["ep"]["estimate"]) == {"adds": 253, "muls": 253}
    assert _counts(per_batch["backprop"]["estimate"]) == {"adds": 115, "muls": 138}
    with pytest.raises(TargetError, match="cost_outer_product"):
        _target(cost_outer_product="analog")


def test_backprop_counts_of_the_tiny_network_equal_the_hand_count():
    """Backprop on the same arrays, batch of 5. Forward: W1 (5 vectors, cells 60, DAC 20, ADC 15) and W2 (5, cells
    30, DAC 15, ADC 10); 5 units' biases and activations per example: 25 adds, 25 activations. Backward: the MSE
    loss gradient (2 adds per example: 10), W2 transposed (5 vectors, cells 30, DAC 10, ADC 15), one derivative
    multiply per unit (25). Estimate, pulsed: one term, 5 x 19 values scaled (muls 95) into 31 slots (2945),
    5 x 4 update cycles."""
    bp = costs.backprop_counts(TINY, BATCH)
    assert _counts(vars(bp["forward"])) == {"mvm_forward": 10, "cells": 90, "dac_forward": 35, "adc_forward": 25,
                                            "adds": 25, "activations": 25}
    assert _counts(vars(bp["backward"])) == {"mvm_transposed": 5, "cells": 30, "dac_transposed": 10,
                                             "adc_transposed": 15, "adds": 10, "muls": 25}
    t = _target()
    _train_batch(t, *_batch())
    report = t.cost_report()
    assert _counts(report["per_batch"]["backprop"]["estimate"]) == {"pulse_slots": 2945, "muls": 95,
                                                                     "update_cycles": 20}
    assert report["per_batch"]["backprop"]["write"] == report["per_batch"]["ep"]["write"]  # the same writes
    assert report["memory_words"] == {"ep": 5 * (3 * 5 + 3), "backprop": 5 * (4 + 5)}


def test_noisy_reads_are_counted_at_every_step_and_each_averaged_read():
    """With read noise per step the drive is read at every step (3 + 2 + 2 per example, not once per batch), and
    ``read_averages = 4`` makes every read four: free forward vectors 4 * (15 + 15) = 120."""
    t = _target(w_read_noise=0.01, read_averages=4)
    _train_batch(t, *_batch())
    free = t.cost_report()["per_batch"]["ep"]["free"]
    assert free["mvm_forward"] == 4 * (T1 * BATCH + T1 * BATCH)
    assert free["mvm_transposed"] == 4 * T1 * BATCH
    assert free["adds"] == 5 * T1 * BATCH + 3 * T1 * BATCH  # the drive's bias added at every read


def test_ce_readout_is_counted_as_reads_at_the_end_and_at_every_nudged_step():
    """A CE network (4 -> 3 hidden, readout 3 -> 2): the readout is read forward once per phase end, and forward
    and transposed at every nudged step; the hidden layer alone has no other per-step reads."""
    spec = NetworkSpec(input_shape=(1, 2, 2), hidden=(3,), classes=2, output="ce")
    t = _target(spec)
    _train_batch(t, *_batch(spec))
    ep = t.cost_report()["per_batch"]["ep"]
    assert ep["free"]["mvm_forward"] == BATCH + BATCH  # the drive, once; the scores at the end
    assert ep["free"]["mvm_transposed"] == 0
    assert ep["nudged+"]["mvm_forward"] == BATCH * (T2 + 1) and ep["nudged+"]["mvm_transposed"] == BATCH * T2
    assert ep["nudged+"]["dac_transposed"] == BATCH * T2 * 2 and ep["nudged+"]["adc_transposed"] == BATCH * T2 * 3
    # the softmax nudge per step and example: 2 * 2 + 3 adds and 2 + 3 muls (the hidden layer's drive needs no
    # add); every forward read of the readout adds the scores' 2 biases
    assert ep["nudged+"]["muls"] == BATCH * T2 * 5
    assert ep["nudged+"]["adds"] == BATCH * T2 * 7 + BATCH * (T2 + 1) * 2


def test_a_convolution_reads_one_vector_per_output_position():
    """A 3x3 convolution (1 -> 2 channels, padding 1, 2x2 max pooling) on 4x4 inputs: its read is 16 vectors per
    example (one per output position before pooling) of 9 inputs and 2 outputs; its state is 2x2x2 = 8 units."""
    spec = NetworkSpec(input_shape=(1, 4, 4), conv=(ConvLayer(channels=2, kernel=3, padding=1),), hidden=(3,),
                       classes=2, output="mse")
    t = _target(spec)
    x, y = _batch(spec)
    t.relax(x, T1)
    t.ledger.begin_phase(0.0, 0)  # close the phase: it counts as inference (no update followed)
    inf = t.ledger.inference
    # drive: the conv once; every step: W2 (8 -> 3) and W3 (3 -> 2) forward and transposed
    assert inf.mvm_forward == BATCH * 16 + T1 * BATCH * 2
    assert inf.mvm_transposed == T1 * BATCH * 2
    assert inf.dac_forward == BATCH * 16 * 9 + T1 * BATCH * (8 + 3)
    assert inf.adc_forward == BATCH * 16 * 2 + T1 * BATCH * (3 + 2)


def test_pulses_and_transfer_reads_are_counted_in_the_write():
    """The write counts the pulses the devices took (device_report agrees) and Tiki-Taka's column reads: two
    columns of every weight array and the one of every bias per transfer, each read with one driven line."""
    t = _target(preset="reram-sb", pulse_mode="count", algorithm="tiki_taka", transfer_columns=2)
    for seed in range(3):
        _train_batch(t, *_batch(seed=seed), delta=0.05)
    report = t.cost_report()
    write = report["per_batch"]["ep"]["write"]
    pulses = t.device_report()["pulses_total"] + t.device_report()["fast_pulses_total"]
    assert write["pulses"] * report["batches"] == pytest.approx(pulses) and pulses > 0
    columns = {"w1": (2, 3), "b1": (1, 3), "w2": (2, 2), "b2": (1, 2)}  # (columns read: a bias has one, outputs)
    assert write["mvm_forward"] == write["dac_forward"] == 6
    assert write["cells"] == write["adc_forward"] == sum(k * o for k, o in columns.values())
    assert report["per_example"]["ep"]["pulses"] == pytest.approx(pulses / (3 * BATCH))


def test_energy_and_latency_follow_the_table():
    """1000 cells at 0.2 V, 12.5 uS (the middle of 0-25 uS), 10 ns, two devices each: 10 pJ. 100 ADC conversions
    at 6 bits and 10 fJ per step: 64 pJ. 10 pulses at 2 pJ, 100 pulse slots at 0.05 pJ, 7 adds, 3 muls, 2
    activations; latency: 3 reads of 80 ns, 2 writes and 3 update cycles of 31 slots of 1 ns."""
    table = costs.CostTable()
    pricing = costs.Pricing(table, 12.5, 2.0, 6, 0, 31)
    c = costs.Counts(mvm_forward=3, cells=1000, adc_forward=100, adc_transposed=10, dac_forward=40, pulses=10,
                     array_writes=2, adds=7, muls=3, activations=2, pulse_slots=100, update_cycles=3)
    e = costs.energy_pj(c, pricing)
    assert e["array"] == pytest.approx(10.0)
    assert e["adc"] == pytest.approx(100 * 0.64 + 10 * 2.56)  # the transposed ADC priced at cost_adc_bits = 8
    assert e["dac"] == pytest.approx(4.0) and e["pulses"] == pytest.approx(20.0)
    assert e["pulse_trains"] == pytest.approx(5.0)
    assert e["digital"] == pytest.approx(7 * 0.9 + 3 * 3.7 + 2 * 1.8)
    assert e["total"] == pytest.approx(sum(v for k, v in e.items() if k != "total"))
    lat = costs.latency_ns(c, pricing)
    assert lat["reads"] == pytest.approx(240.0) and lat["writes"] == pytest.approx((2 + 3) * 31.0)


def test_the_cost_table_is_a_crossbar_option_and_bad_values_are_named():
    t = _target(cost_adc_fom_fj=20.0, cost_add_pj=0.1)
    _train_batch(t, *_batch())
    report = t.cost_report()
    assert report["table"]["cost_adc_fom_fj"] == 20.0
    u = _target()
    _train_batch(u, *_batch())
    assert report["per_example"]["ep"]["energy_pj"]["adc"] == pytest.approx(
        2 * u.cost_report()["per_example"]["ep"]["energy_pj"]["adc"])
    with pytest.raises(TargetError, match="cost_read_ns"):
        _target(cost_read_ns=-1.0)
    with pytest.raises(TargetError, match="cost_adc_bits"):
        _target(cost_adc_bits=40)


def test_evaluation_phases_count_as_inference_and_the_ledger_survives_a_device_state():
    """Free phases that no update follows are inference, not training; device_state carries the ledger."""
    t = _target()
    x, y = _batch()
    _train_batch(t, x, y)
    before = t.cost_report()["per_batch"]
    t.relax(x, T1)  # an evaluation
    _train_batch(t, x, y)
    report = t.cost_report()
    assert report["batches"] == 2 and report["examples"] == 2 * BATCH
    assert report["per_batch"]["ep"]["free"]["mvm_transposed"] == before["ep"]["free"]["mvm_transposed"]
    assert report["per_example"]["inference"]["energy_pj"]["total"] > 0
    u = _target()
    u.load_device_state(t.device_state())
    assert u.cost_report() == t.cost_report()
    state = t.device_state()
    del state["costs"]  # a state saved before the accounting existed: counting starts afresh
    u.load_device_state(state)
    assert u.cost_report() == {}


def test_no_report_before_training_and_reference_targets_count_nothing():
    t = _target()
    t.relax(_batch()[0], T1)
    assert t.cost_report() == {}
    ref = targets.open("reference", TINY)
    assert ref.cost_report() == {}


@pytest.mark.parametrize("dynamics", ["prototypical", "leaky"])
def test_step_ops_count_every_unit_of_every_layer(dynamics):
    """Two hidden layers (3, 4) and an MSE output (2): per step 1 + 2 + 1 adds per unit of layers 1, 2, 3 ..."""
    spec = NetworkSpec(input_shape=(1, 2, 2), hidden=(3, 4), classes=2, output="mse", dynamics=dynamics,
                       eps=0.5 if dynamics == "leaky" else 1.0)
    free, nudged = costs.step_ops(spec, False), costs.step_ops(spec, True)
    extra = dynamics == "leaky"
    assert free.adds == 3 * 1 + 4 * 2 + 2 * 1 + extra * 9
    assert free.activations == 9 and free.muls == extra * 2 * 9
    assert nudged.adds - free.adds == 4 and nudged.muls - free.muls == 2
    assert math.isclose(costs.Counts().add(free, 2.0).adds, 2 * free.adds)
