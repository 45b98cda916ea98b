"""The RTL core (firmware_interface/fpga/rtl) on Icarus Verilog through cocotb, against the fixed-point model:
random networks and every network the serial target's tests use, free and nudged phases bit for bit; rounding
and saturation corner cases; the cycle model; and the errors for networks that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from firmware_interface.fpga.cycle_model import phase_cycles
from firmware_interface.fpga.layout import (R_STATE, CoreFitError, CoreImage, CoreParams, accumulator_bits, address,
                                            core_image, input_writes, phase_writes)
from firmware_interface.protocol import BETA_FRAC, LayerRecord, NetworkRecord
from firmware_interface.tensor import I16, I32, U8
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from quantize.config import QuantConfig
from quantize.fixed_point import FixedPointNetwork, FixedTensor, round_shift
from quantize.network import QuantEPNetwork
from targets.serial.image import BoardImage, board_image
from tests.firmware_interface.test_firmware import relax_model

from tests.fpga.sim import REPO, simulate, simulator_missing

needs_simulator = pytest.mark.skipif(simulator_missing() is not None, reason=simulator_missing() or "")

TEST_CORE = CoreParams(LANES=4, ACC_W=64, MAX_LAYERS=4, WDEPTH=8192, UDEPTH=1024, IDEPTH=256, DDEPTH=1024)
ODD_CORE = CoreParams(LANES=3, ACC_W=64, MAX_LAYERS=4, WDEPTH=4096, UDEPTH=256, IDEPTH=64, DDEPTH=64)


# -- cases ---------------------------------------------------------------------------------------------------

class Case:
    """A network in the core and its phases: the vectors for the testbench and what each phase must give."""

    def __init__(self, name: str, core: CoreImage) -> None:
        self.name, self.core = name, core
        self.phases: list[dict] = []
        self.expected: list[dict] = []
        units = [g.units for g in core.layers]
        self.read = [core.state_address(i, c) for i, u in enumerate(units) for c in range(u)]

    def phase(self, steps: int, states: np.ndarray, beta_q: int = 0, target: int = 0, x: np.ndarray | None = None,
              init: np.ndarray | None = None, max_delta: int | None = None) -> None:
        """A phase of ``steps`` steps; ``x``: new input (and zero states unless ``init``); ``states``: expected."""
        writes = []
        if x is not None:
            writes += input_writes(self.core, x)
            if init is None:
                init = np.zeros(len(self.read), np.int64)
        if init is not None:
            writes += [(a, int(v)) for a, v in zip(self.read, init)]
        writes += phase_writes(self.core, steps, beta_q, target)
        cycles = phase_cycles(self.core, steps, new_drive=x is not None)
        self.phases.append({"writes": writes, "limit": cycles + 100, "read": self.read})
        self.expected.append({"states": [int(v) for v in states], "cycles": cycles, "max_delta": max_delta})

    def vectors(self) -> dict:
        return {"writes": list(self.core.writes), "phases": self.phases}


def _flat(states) -> np.ndarray:
    return torch.cat([s.flatten() for s in states]).numpy()


def fixed_point_case(name: str, fp: FixedPointNetwork, params: CoreParams, seed: int, steps: int, beta: float,
                     batch: int = 2, nudged_steps: int | None = None) -> Case:
    """Free phases from zeros, and for MSE networks nudged phases from the free states and from random states."""
    case = Case(name, core_image(board_image(fp, 1), params, accumulator_bits(fp)))
    spec = fp.spec
    gen = torch.Generator().manual_seed(seed)
    x = fp.encode_input(torch.rand(batch, *spec.input_shape, generator=gen))
    y = torch.randint(0, spec.classes, (batch,), generator=gen)
    nudged_steps = nudged_steps or max(1, steps // 2)
    for b in range(batch):
        xb, yb = x[b:b + 1], y[b:b + 1]
        free = fp.relax(xb, steps)
        before = fp.relax(xb, steps - 1).states if steps > 1 else [torch.zeros_like(s) for s in free.states]
        delta = int((_flat(free.states) - _flat(before)).__abs__().max())
        case.phase(steps, _flat(free.states), x=xb[0].numpy(), max_delta=delta)
        if spec.output == "mse":
            beta_q = round(beta * (1 << BETA_FRAC))
            nudged = fp.relax(xb, nudged_steps, beta, yb, init=free.states)
            case.phase(nudged_steps, _flat(nudged.states), beta_q, int(yb))
            start = [torch.randint(0, 1 << fp.state_bits, s.shape, generator=gen) for s in free.states]
            other = fp.relax(xb, nudged_steps, -beta, yb, init=start)
            case.phase(nudged_steps, _flat(other.states), round(-beta * (1 << BETA_FRAC)), int(yb),
                       init=_flat(start))
    return case


def quantized(spec: NetworkSpec, quant: dict, weights: dict) -> FixedPointNetwork:
    net = QuantEPNetwork(spec, QuantConfig(**quant))
    net.load_shadow(weights)
    return FixedPointNetwork.from_quant(net)


def random_network(rng: np.random.Generator, seed: int) -> tuple[FixedPointNetwork, int, float]:
    """A network drawn from the ranges of the serial target's property test (tests/targets/test_serial.py)."""
    normalised = bool(rng.integers(2))
    spec = NetworkSpec(input_shape=(1, *(2 * [int(rng.integers(2, 8))])),
                       hidden=tuple(int(h) for h in rng.integers(1, 25, int(rng.integers(1, 4)))),
                       classes=int(rng.integers(2, 7)), output=str(rng.choice(["ce", "mse"])),
                       tied=bool(rng.integers(2)), update=str(rng.choice(["synchronous", "alternating"])),
                       activation=str(rng.choice(["hard_sigmoid", "hard_sigmoid_half"])),
                       input_mean=(0.4,) if normalised else (), input_std=(0.3,) if normalised else ())
    quant = {"weight_bits": int(rng.integers(3, 13)), "state_bits": int(rng.integers(3, 13)),
             "input_bits": int(rng.integers(4, 11)), "granularity": str(rng.choice(["per_tensor", "per_channel"]))}
    gain = 1.0 + (seed % 3)
    weights = {n: gain * p for n, p in init_parameters(spec, seed).items()}
    return quantized(spec, quant, weights), int(rng.integers(1, 31)), float(rng.choice([0.5, -0.5, 0.25, 1.0,
                                                                                         -0.0625, 0.1]))


def check(cases: list[Case], params: CoreParams, work, top: str = "ep_relax_core") -> None:
    results = simulate(params, [c.vectors() for c in cases], work, top)
    bad = []
    for case, got in zip(cases, results):
        for i, (g, want) in enumerate(zip(got, case.expected)):
            if g["states"] != want["states"]:
                diff = [(k, a, b) for k, (a, b) in enumerate(zip(g["states"], want["states"])) if a != b]
                bad.append(f"{case.name} phase {i}: {len(diff)} states differ, first (index, core, model) {diff[:4]}")
            if g["cycles"] != want["cycles"]:
                bad.append(f"{case.name} phase {i}: {g['cycles']} cycles, the cycle model says {want['cycles']}")
            if want["max_delta"] is not None and g["max_delta"] != want["max_delta"]:
                bad.append(f"{case.name} phase {i}: MAX_DELTA {g['max_delta']}, the model {want['max_delta']}")
            if g["busy"]:
                bad.append(f"{case.name} phase {i}: still busy after done")
    assert not bad, "\n".join(bad)


# -- random networks -----------------------------------------------------------------------------------------

@needs_simulator
@pytest.mark.parametrize("params,count,seed", [(TEST_CORE, 30, 100), (ODD_CORE, 25, 200)],
                         ids=["4-lanes", "3-lanes"])
def test_random_networks_are_bit_exact(params, count, seed, tmp_path):
    rng = np.random.default_rng(seed)
    cases, seen = [], set()
    for k in range(count):
        fp, steps, beta = random_network(rng, seed + k)
        spec = fp.spec
        seen.add((spec.output, spec.update, spec.tied, len(spec.hidden)))
        cases.append(fixed_point_case(f"random {k} {spec.describe()} {fp.formats()['parameters']['w1']['bits']}-bit "
                                      f"w, {fp.state_bits}-bit s, {spec.update}, {steps} steps", fp, params,
                                      seed + k, steps, beta))
    assert len(seen) >= 8  # the draw covers outputs, schedules, tied/untied and depths
    check(cases, params, tmp_path)


# -- the networks of the serial target's tests ---------------------------------------------------------------

W8 = {"weight_bits": 8, "state_bits": 8}


def _spec(side, hidden, classes, output="mse", **kw) -> NetworkSpec:
    return NetworkSpec(input_shape=(1, side, side), hidden=hidden, classes=classes, output=output, **kw)


SERIAL_NETWORKS = {
    "SMALL": (_spec(5, (12,), 3), W8),
    "WIDE": (_spec(5, (128,), 3), W8),
    "nearly a payload": (_spec(4, (681,), 2), W8),
    "not trivially equal": (_spec(6, (20, 12), 4), {"weight_bits": 6, "state_bits": 6}),
    "tiny config": (_spec(8, (16,), 4), W8),
    "killed host": (_spec(8, (64,), 4), W8),
    "ce": (_spec(5, (8,), 3, "ce"), W8),
    "many classes": (_spec(5, (4,), 300), W8),
    "fmnist_board": (_spec(14, (64,), 10), {"weight_bits": 8, "state_bits": 8, "input_bits": 8}),
}


@needs_simulator
def test_the_serial_targets_networks_are_bit_exact(tmp_path):
    cases = []
    for k, (name, (spec, quant)) in enumerate(SERIAL_NETWORKS.items()):
        for gain in (1.0, 3.0):
            weights = {n: gain * p for n, p in init_parameters(spec, k).items()}
            fp = quantized(spec, quant, weights)
            cases.append(fixed_point_case(f"{name} x{gain}", fp, TEST_CORE, k, 20, 0.5, batch=1, nudged_steps=8))
    # the hand-made network of tests/firmware_interface/test_firmware.py, in its four schedules
    for flags in range(4):
        rng = np.random.default_rng(10 + flags)
        tensors = {}
        units, fan_in = [6, 3], [5, 6]
        for l, (u, f) in enumerate(zip(units, fan_in)):
            tensors[4 * l] = (rng.integers(-31, 32, u * f), I16)
            tensors[4 * l + 1] = (rng.integers(-300, 300, u), I32)
            tensors[4 * l + 3] = (np.concatenate([rng.integers(0, 3, 2 * u), np.zeros(u, int)]), U8)
            if flags & 2 and l >= 1:
                tensors[4 * l + 2] = (rng.integers(-31, 32, u * f), I16)
        record = NetworkRecord((LayerRecord(6, 7), LayerRecord(3, 6)), 5, 6, 4, 4, 4, alternating=bool(flags & 1),
                               untied=bool(flags & 2))
        image = BoardImage(record, tensors, 4, 4, U8, U8)
        case = Case(f"test_firmware SMALL flags {flags}", core_image(image, TEST_CORE, 40))
        x = rng.integers(0, 16, (4, 5))
        want = relax_model({t: (None, v) for t, (v, _) in tensors.items()}, x, 6, flags)
        for b in range(4):
            case.phase(6, np.concatenate([w[b] for w in want]), x=x[b])
        assert len(np.unique(np.concatenate([w.ravel() for w in want]))) > 3
        cases.append(case)
    check(cases, TEST_CORE, tmp_path)


# -- directed: rounding, saturation, the widest formats ------------------------------------------------------

def _one_layer(biases: list[int], state_bits: int, weight_frac: int) -> FixedPointNetwork:
    """An MSE network with one state layer whose accumulators are w * x + b (no shifts before rounding)."""
    units = len(biases)
    spec = NetworkSpec(input_shape=(1, 1, 1), hidden=(), classes=units, output="mse")
    params = {"w1": FixedTensor(torch.ones(units, 1, dtype=torch.long), torch.tensor(weight_frac), 8, True),
              "b1": FixedTensor(torch.tensor(biases), torch.tensor(weight_frac), 32, True)}
    fp = FixedPointNetwork(spec, FixedTensor(torch.zeros(0, dtype=torch.long), torch.tensor(0), 8, False),
                           state_bits, state_bits, params)
    fp._plan()
    return fp


@needs_simulator
def test_rounding_is_half_to_even_and_states_saturate(tmp_path):
    state_bits, weight_frac = 8, 26  # acc_frac 26, state shift 18: a state step is 2^18 in the accumulator
    k = weight_frac - state_bits
    half = 1 << (k - 1)
    biases = [m * half + d for m in range(-7, 8) for d in (-1, 0, 1)]  # every half, and its neighbours
    biases += [255 << k, (255 << k) + half, (255 << k) + half - 1, 256 << k, (1 << 31) - 1, -(1 << 31), -1, 1]
    fp = _one_layer(biases, state_bits, weight_frac)
    assert fp.plans[0].state_shift == k
    acc = torch.tensor(biases)
    expected = round_shift(acc, k).clamp(0, 255)
    assert {0, 255} <= set(expected.tolist()) and (expected % 2 == 1).any()
    case = Case("rounding", core_image(board_image(fp, 1), TEST_CORE, accumulator_bits(fp)))
    case.phase(1, expected.numpy(), x=np.zeros(1, np.int64))
    # the nudge saturates both ways: beta 4 pulls the target up and every other unit down
    free = fp.relax(torch.zeros(1, 1, dtype=torch.long), 1)
    for beta, target in ((4.0, 3), (-4.0, 30), (0.0078125, 5)):
        nudged = fp.relax(torch.zeros(1, 1, dtype=torch.long), 3, beta, torch.tensor([target]), init=free.states)
        case.phase(3, _flat(nudged.states), round(beta * (1 << BETA_FRAC)), target, x=np.zeros(1, np.int64),
                   init=_flat(free.states))
        assert {0, 255} <= set(_flat(nudged.states).tolist()) or beta < 1
    check([case], TEST_CORE, tmp_path)


@needs_simulator
def test_the_widest_formats_are_exact(tmp_path):
    """16-bit weights, states and signed inputs at their extremes (the spec arithmetic of the firmware tests)."""
    rng = np.random.default_rng(5)
    units, fan_in = [5, 7, 3], [4, 5, 7]
    tensors = {}
    for l, (u, f) in enumerate(zip(units, fan_in)):
        tensors[4 * l] = (rng.choice([-32767, 32767, -1, 0, 1, 12345], u * f), I16)
        tensors[4 * l + 1] = (rng.choice([-(1 << 31), (1 << 31) - 1, 0, 7], u), I32)
        tensors[4 * l + 3] = (np.concatenate([rng.integers(0, 3, 2 * u), np.zeros(u, int)]), U8)
    record = NetworkRecord(tuple(LayerRecord(u, s) for u, s in zip(units, (20, 33, 40))), 4, 16, 16, 16, 1,
                           signed_input=True)
    image = BoardImage(record, tensors, 16, 16, I16, I16)
    case = Case("widest", core_image(image, TEST_CORE, 64))
    x = np.array([[-32768, 32767, -1, 5], [32767, 32767, 32767, 32767]])
    want = relax_model({t: (None, v) for t, (v, _) in tensors.items()}, x, 4, 0, units, (20, 33, 40), 16)
    for b in range(2):
        case.phase(4, np.concatenate([w[b] for w in want]), x=x[b])
    assert len(np.unique(np.concatenate([w.ravel() for w in want]))) > 3
    check([case], TEST_CORE, tmp_path)


@needs_simulator
def test_the_spi_top_level_runs_a_network_bit_exact(tmp_path):
    """ep_spi_top, the synthesised top level: a network written, relaxed and read back over SPI."""
    spec, quant = SERIAL_NETWORKS["SMALL"]
    fp = quantized(spec, quant, {n: 2.0 * p for n, p in init_parameters(spec, 4).items()})
    params = CoreParams(LANES=2, ACC_W=40, MAX_LAYERS=2, WDEPTH=256, UDEPTH=32, IDEPTH=32, DDEPTH=16)
    case = fixed_point_case("SMALL over SPI", fp, params, 4, 6, 0.5, batch=1, nudged_steps=3)
    check([case], params, tmp_path, top="ep_spi_top")


# -- what does not fit -------------------------------------------------------------------------------------

def _synthesized(name: str) -> CoreParams:
    """The parameters a design of the synthesis Makefile (firmware_interface/fpga/Makefile) is built with."""
    import re

    text = (REPO / "firmware_interface/fpga/Makefile").read_text()
    line = re.search(rf"^{name} := (.*)$", text, re.M).group(1)
    return CoreParams(**{k: int(v) for k, v in re.findall(r"-set (\w+) (\d+)", line)})


def test_the_synthesized_designs_hold_the_networks_the_docs_say():
    """fmnist_board fits the UP5K design; 196-300-10 is the largest of its shape that fits the other."""
    fmnist, largest = _synthesized("FMNIST"), _synthesized("LARGEST")
    spec, quant = SERIAL_NETWORKS["fmnist_board"]
    for params, hidden, fits in ((fmnist, 64, True), (largest, 300, True), (largest, 304, False)):
        shape = _spec(14, (hidden,), 10)
        fp = quantized(shape, quant, {n: 2.0 * p for n, p in init_parameters(shape, 0).items()})
        if fits:
            image = core_image(board_image(fp, 1), params, accumulator_bits(fp))
            assert image.weight_words <= params.WDEPTH
        else:
            with pytest.raises(CoreFitError, match="weight words"):
                core_image(board_image(fp, 1), params, accumulator_bits(fp))


def test_networks_that_do_not_fit_are_refused_naming_why():
    spec, quant = SERIAL_NETWORKS["fmnist_board"]
    fp = quantized(spec, quant, init_parameters(spec, 0))
    small = CoreParams(LANES=2, MAX_LAYERS=1, WDEPTH=1024, UDEPTH=64, IDEPTH=128, DDEPTH=32)
    with pytest.raises(CoreFitError) as e:
        core_image(board_image(fp, 1), small, accumulator_bits(fp))
    for what in ("2 state layers", "74 state units", "196 inputs", "64 units in layer 1", "weight words"):
        assert what in str(e.value)
    with pytest.raises(CoreFitError, match="accumulator"):
        core_image(board_image(fp, 1), TEST_CORE, 65)
    image = core_image(board_image(fp, 1), TEST_CORE, accumulator_bits(fp))
    with pytest.raises(CoreFitError, match="beta_q"):
        phase_writes(image, 5, 5 << BETA_FRAC, 0)
    with pytest.raises(CoreFitError, match="steps"):
        phase_writes(image, 0, 0, 0)
    with pytest.raises(CoreFitError, match="input of shape"):
        input_writes(image, np.zeros(10))
    with pytest.raises(CoreFitError, match="ACC_W"):
        CoreParams(ACC_W=30)
    conv = NetworkSpec(input_shape=(1, 6, 6), conv=(ConvLayer(2, 3, padding=1),), classes=3, output="mse")
    fp = quantized(conv, quant, init_parameters(conv, 0))
    with pytest.raises(CoreFitError, match="conv layers, the core runs dense layers only"):
        core_image(board_image(fp, 1), TEST_CORE, accumulator_bits(fp))
    assert address(R_STATE, 3) == 6 << 20 | 3
