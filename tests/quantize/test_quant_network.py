"""Quantized EP networks from Brevitas on the reference target: formats, constant scales, QAT, config."""

import math

import pytest
import torch

from conftest import tiny_config_text
from hwtoolkit import config
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import NetworkSpec
from hwtoolkit.training.loop import train
from quantize.config import QuantConfig, QuantConfigError
from targets import TargetError
from targets.reference import ReferenceTarget

SPEC = NetworkSpec(input_shape=(1, 8, 8), hidden=(24, 12), classes=5, output="ce")


def quant_target(spec=SPEC, dtype="float32", **quant):
    t = ReferenceTarget(spec, dtype=dtype, quant={"weight_bits": 4, "state_bits": 4, **quant})
    t.program(init_parameters(spec, 7))
    return t


def on_grid(values: torch.Tensor, scale: torch.Tensor) -> bool:
    q = values / scale
    return bool(torch.equal(q, q.round()))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_states_live_on_the_state_grid(bits):
    t = quant_target(state_bits=bits)
    r = t.relax(torch.rand(64, 1, 8, 8), 15)
    lsb = 2.0 ** -bits  # pow2 scale of an unsigned state on [0, 1]
    for s in r.states:
        assert on_grid(s, torch.tensor(lsb))
        assert s.min() >= 0 and s.max() <= 1 - lsb
    assert len(torch.unique(torch.cat([s.flatten() for s in r.states]))) > 1  # not all saturated or zero


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("scale", ["float", "pow2"])
def test_weights_are_narrow_range_integers_times_their_scales(granularity, scale):
    t = quant_target(weight_bits=3, granularity=granularity, scale=scale)
    eff = t.effective_params()
    for name in ("w1", "w2", "w_out"):
        qw = t.quant.weights[name].quant_weight()
        ints = qw.int().float()
        assert ints.abs().max() <= 3  # 3 bits, narrow range: -3 .. 3
        scales = qw.scale.flatten()
        assert scales.numel() == (qw.value.shape[0] if granularity == "per_channel" else 1)
        if scale == "pow2":
            assert torch.allclose(torch.log2(scales), torch.log2(scales).round())
        assert torch.allclose(eff[name], ints * qw.scale.view(-1, 1) if scales.numel() > 1 else ints * qw.scale)


def test_biases_are_integers_in_the_accumulator_scale():
    t = quant_target(weight_bits=6, state_bits=5)
    eff = t.effective_params()
    w_scale = t.quant.weights["w2"].quant_weight().scale
    acc_lsb = w_scale * 2.0 ** -5  # weight scale x the scale of the state the layer reads
    assert on_grid(eff["b2"], acc_lsb)
    assert not on_grid(t.read_weights()["b2"], acc_lsb)  # the shadow bias is not


def test_state_scales_are_constant_across_steps_and_modes():
    """Activation statistics must not drift: the state and input scales are constants, even in train mode."""
    t = quant_target(state_bits=6)
    t.quant.train()
    q = t.quant.state_quant[0]
    before = float(q(torch.rand(4, 24)).scale)
    for k in range(50):
        q(torch.rand(4, 24) * (k + 1))  # very different ranges: a statistics-based scale would move
    assert float(q(torch.rand(4, 24)).scale) == before == 2.0 ** -6
    assert float(t.quant.input_quant(torch.rand(2, 1, 8, 8)).scale) == 2.0 ** -8


def test_updates_accumulate_in_the_float_shadow_weights():
    """QAT: an increment below one LSB changes the shadow weights but not the quantized ones; enough of them do."""
    t = quant_target(weight_bits=4, state_bits=8)
    lsb = float(t.quant.weights["w1"].quant_weight().scale)
    w0, q0 = t.read_weights()["w1"], t.effective_params()["w1"].clone()
    inner = w0.abs() < 0.5 * w0.abs().max()  # leave the largest weights alone, so the scale stays put
    small = {"w1": inner * (lsb / 10)}
    t.apply_update(small)
    assert torch.allclose(t.read_weights()["w1"], w0 + small["w1"])
    changed_once = (t.effective_params()["w1"] != q0)[inner].float().mean().item()
    for _ in range(9):
        t.apply_update(small)
    assert float(t.quant.weights["w1"].quant_weight().scale) == lsb
    changed_after = (t.effective_params()["w1"] != q0)[inner].float().mean().item()
    assert changed_after > 0.8 and changed_once < 0.2  # a tenth of an LSB moves few weights; a whole LSB nearly all


def test_quantized_relaxation_differs_from_float_by_a_bounded_amount():
    """8-bit weights and states stay close to the float network's fixed point; 2-bit ones do not."""
    x = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    float_t = ReferenceTarget(SPEC, dtype="float64")
    float_t.program(init_parameters(SPEC, 7))
    ref = float_t.relax(x, 30).states
    gaps = {}
    for bits in (8, 2):
        q = quant_target(dtype="float64", weight_bits=bits, state_bits=bits).relax(x, 30).states
        gaps[bits] = max((a - b).abs().mean().item() for a, b in zip(ref, q))
    assert gaps[8] < 0.01 < gaps[2]


def test_float64_and_float32_quantized_targets_agree_on_states():
    x = torch.rand(64, 1, 8, 8)
    a = quant_target(dtype="float32").relax(x, 12).states
    b = quant_target(dtype="float64").relax(x, 12).states
    lsb = 2.0 ** -4
    worst = max(((s.double() - t) / lsb).abs().max().item() for s, t in zip(a, b))
    assert worst <= 1  # float32 sums may round differently at a tie: at most one LSB


@pytest.mark.parametrize("table, message", [
    ("weight_bits = 1", "quant.weight_bits = 1 is invalid"),
    ("state_bits = 17", "quant.state_bits = 17 is invalid"),
    ("scale = \"log\"", "quant.scale = 'log' is invalid"),
    ("granularity = \"per_row\"", "quant.granularity = 'per_row' is invalid"),
    ("weight_bits = 4\nbits = 3", "unknown key(s) ['bits'] in [quant]"),
])
def test_config_errors_name_the_quant_field(idx_dataset, table, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        config.loads(tiny_config_text(idx_dataset, extra=f"[quant]\n{table}\n"))


def test_quant_needs_the_reference_target_and_an_ep_estimator(idx_dataset):
    with pytest.raises(config.ConfigError, match="target.name = 'crossbar' is invalid"):
        config.loads(tiny_config_text(idx_dataset, extra="[quant]\nweight_bits = 4\n[target]\nname = \"crossbar\"\n"))
    with pytest.raises(config.ConfigError, match="estimator = 'bptt' is invalid"):
        config.loads(tiny_config_text(idx_dataset, estimator="bptt", extra="[quant]\nweight_bits = 4\n"))


def test_target_option_errors_are_target_errors():
    with pytest.raises(TargetError, match="quant.weight_bits = 40"):
        ReferenceTarget(SPEC, quant={"weight_bits": 40})
    with pytest.raises(TargetError, match="unexpected keyword"):
        ReferenceTarget(SPEC, quant={"weights": 4})


def test_a_float_quant_table_is_the_float_network():
    cfg = QuantConfig()
    assert not cfg.enabled and cfg.describe() == "float"
    t = ReferenceTarget(SPEC, quant={"weight_bits": 0, "state_bits": 0})
    assert t.quant is None and t.capabilities.exact
    with pytest.raises(QuantConfigError):
        QuantConfig(input_bits=1)


def test_quantized_training_learns_and_records_its_quantization(idx_dataset, tmp_path):
    """8-bit EP training on the tiny set reaches the float network's accuracy within a few points."""
    results = {}
    for name, table in (("float", ""), ("q8", "[quant]\nweight_bits = 8\nstate_bits = 8\n")):
        cfg = config.loads(tiny_config_text(idx_dataset, epochs=4, extra=table))
        results[name] = train(cfg, tmp_path / name, progress=False, log=lambda m: None)["test_accuracy"]
    assert results["float"] > 0.9  # four classes: chance is 0.25
    assert results["q8"] > results["float"] - 0.05
    stored = config.loads((tmp_path / "q8" / "config.toml").read_text())
    assert stored.quant == QuantConfig(weight_bits=8, state_bits=8)
    assert "quant" not in config.loads((tmp_path / "float" / "config.toml").read_text()).to_dict()
    assert math.isfinite(results["q8"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantized_network_on_cuda_matches_the_cpu():
    """In float64 the quantized sums are exact on both devices: the states must be identical."""
    x = torch.rand(128, 1, 8, 8)
    cpu = quant_target(dtype="float64", weight_bits=6, state_bits=6)
    gpu = ReferenceTarget(SPEC, device="cuda", dtype="float64", quant={"weight_bits": 6, "state_bits": 6})
    gpu.program(cpu.read_weights())
    for a, b in zip(cpu.relax(x, 20).states, gpu.relax(x, 20).states):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("scale", ["pow2", "float"])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_state_rounding_is_the_brevitas_state_quantizer(scale, bits):
    """The states are rounded by the quantizer's constants in plain ops: it must equal the Brevitas module."""
    t = quant_target(state_bits=bits, scale=scale)
    q = t.quant.state_quant[0]
    lsb = float(q(torch.zeros(1)).scale)
    ties = (torch.arange(-4, 2 ** bits + 4) + 0.5) * lsb  # exact half-steps, and values beyond both ends
    v = torch.cat([torch.rand(10000) * 1.4 - 0.2, ties])
    assert torch.equal(t.quant.store(0, v), q(v).value)
