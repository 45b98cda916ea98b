"""The crossbar target as a target: equivalence with the reference when ideal, options, errors, trains, training."""

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import targets
from hwtoolkit import config
from hwtoolkit.network.bptt import bptt_grads
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from hwtoolkit.training.estimators import make_estimator
from hwtoolkit.training.loop import train
from targets import TargetError, Update
from targets.crossbar import (PRESETS, RESPONSES, CrossbarConfigError, Device, ExponentialStep, Periphery,
                              ResponseModel, SoftBounds, TableResponse, TileConfig, device_config)
from targets.crossbar.devices import PairArray
from tests.conftest import tiny_config_text

MLP = NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 8), classes=4, output="ce")
UNTIED = NetworkSpec(input_shape=(1, 6, 6), hidden=(10,), classes=4, output="mse", tied=False)
CONV = NetworkSpec(input_shape=(1, 8, 8), conv=(ConvLayer(channels=3, kernel=3, padding=1, pool="max"),),
                   hidden=(), classes=3, output="ce")
EP = config.EPConfig(beta=0.2, free_steps=30, nudged_steps=10)


def _batch(spec: NetworkSpec, n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *spec.input_shape, generator=gen, dtype=torch.float64),
            torch.randint(0, spec.classes, (n,), generator=gen))


def _pair(spec: NetworkSpec, **options):
    w = init_parameters(spec, 5, torch.float64)
    ref = targets.open("reference", spec, dtype="float64")
    xb = targets.open("crossbar", spec, dtype="float64", **options)
    ref.program(w)
    xb.program(w)
    return ref, xb


@pytest.mark.parametrize("spec", [MLP, UNTIED, CONV], ids=["mlp", "untied", "conv"])
def test_ideal_crossbar_matches_reference_states_and_updates(spec: NetworkSpec) -> None:
    """All effects off: same states, same EP direction, same weights after several written updates."""
    ref, xb = _pair(spec, preset="ideal")
    est = make_estimator("symmetric", EP)
    for step in range(4):
        x, y = _batch(spec, seed=step)
        a = est(ref, x, y, torch.Generator().manual_seed(step))
        b = est(xb, x, y, torch.Generator().manual_seed(step))
        for s_ref, s_xb in zip(a.free.states, b.free.states):
            torch.testing.assert_close(s_xb, s_ref, atol=1e-10, rtol=0)
        for n in a.direction:
            torch.testing.assert_close(b.direction[n], a.direction[n], atol=1e-10, rtol=1e-9)
        delta = {n: 0.1 * d for n, d in a.direction.items()}
        ref.apply_update(delta)
        xb.apply_update(delta)
    for n, w in ref.read_weights().items():
        torch.testing.assert_close(xb.read_weights()[n], w, atol=1e-12, rtol=1e-9)


def test_ideal_crossbar_keeps_the_gdu_property() -> None:
    """Symmetric EP on the ideal crossbar matches the BPTT gradient (cosine > 0.999 at small beta)."""
    spec = MLP
    _, xb = _pair(spec, preset="ideal")
    x, y = _batch(spec, n=32)
    ep = config.EPConfig(beta=0.01, free_steps=60, nudged_steps=40)
    direction = make_estimator("symmetric", ep)(xb, x, y, torch.Generator()).direction
    grads, _ = bptt_grads(spec, xb.read_weights(), x, y, ep.free_steps)
    a = torch.cat([direction[n].flatten() for n in grads])
    b = torch.cat([-grads[n].flatten() for n in grads])
    assert torch.nn.functional.cosine_similarity(a, b, 0) > 0.999


def test_device_effects_change_states_and_updates() -> None:
    """A realistic preset is not silently ideal: its states and written weights differ from the reference's."""
    ref, xb = _pair(MLP, preset="ecram-mo")
    x, y = _batch(MLP)
    a = ref.relax(x, 20)
    b = xb.relax(x, 20)
    assert max((s - t).abs().max() for s, t in zip(a.states, b.states)) > 1e-3
    delta = {n: 1e-3 * torch.ones_like(w) for n, w in ref.read_weights().items()}
    before = xb.read_weights()
    xb.apply_update(delta)
    applied = {n: xb.read_weights()[n] - before[n] for n in before}
    assert max((applied[n] - delta[n]).abs().max() for n in delta) > 1e-5


def test_registry_lists_and_opens_crossbar() -> None:
    assert "crossbar" in targets.available()
    xb = targets.open("crossbar", MLP, preset="reram-sb", seed=2)
    assert xb.capabilities.name == "crossbar" and not xb.capabilities.exact
    assert xb.config.response.name == "soft_bounds"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid_and_cites_a_source(preset: str) -> None:
    assert PRESETS[preset]["source"]
    cfg = device_config(preset)
    assert cfg.preset == preset


@pytest.mark.parametrize("options, pattern", [
    ({"preset": "nope"}, r"crossbar.preset = 'nope' is invalid"),
    ({"up_down": 1.5}, r"crossbar.up_down = 1.5 is invalid"),
    ({"adc_bits": 1}, r"crossbar.adc_bits = 1 is invalid"),
    ({"adc_bits": 4.5}, r"crossbar.adc_bits = 4.5 is invalid"),
    ({"response": "cubic"}, r"crossbar.response = 'cubic' is invalid"),
    ({"dw_min_std": 1.0}, r"crossbar.dw_min_std = 1.0 is invalid.*dw_min = 0"),
    ({"colour": "red"}, r"unknown crossbar key\(s\) \['colour'\]"),
    ({"backward": {"adc_bits": 99}}, r"crossbar.backward.adc_bits = 99 is invalid"),
    ({"response": "table", "table_g": [0, 1], "table_up": [1, 0], "table_down": [1, 1], "dw_min": 0.01},
     r"crossbar.table_up"),
    ({"seed": "x"}, r"seed = 'x' is invalid"),
])
def test_bad_options_name_the_parameter(options: dict, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        targets.open("crossbar", MLP, **options)


def test_user_preset_from_toml_file(tmp_path) -> None:
    path = tmp_path / "mydevice.toml"
    path.write_text('preset = "ecram-li"\ndw_min = 0.002\nadc_bits = 6\n')
    cfg = device_config(str(path), up_down=0.05)
    assert cfg.response.name == "soft_bounds" and cfg.response.slope_down == PRESETS["ecram-li"]["slope_down"]
    assert cfg.device.dw_min == 0.002 and cfg.read.forward.adc_bits == 6 and cfg.device.up_down == 0.05
    path.write_text('dw_min = -1\n')
    with pytest.raises(ValueError, match=r"crossbar.dw_min = -1.0 is invalid"):
        device_config(str(path))
    with pytest.raises(ValueError, match="no such file"):
        device_config(str(tmp_path / "missing.toml"))


def test_flat_keys_fill_the_composed_configuration() -> None:
    """A preset's flat keys land in the dataclass that holds them; update and preset stay reachable on the top."""
    cfg = device_config("reram-exp", max_pulses=15)
    assert isinstance(cfg, TileConfig) and cfg.preset == "reram-exp" and cfg.update == "combined"
    assert cfg.response == ExponentialStep(gamma_up=0.324, gamma_down=1.246)
    assert cfg.device.dw_min == PRESETS["reram-exp"]["dw_min"] and cfg.device.up_down == -0.538
    assert cfg.variation.dw_min_std == 5.0 and cfg.variation.write_noise_std == 62.0
    assert cfg.write.pulse_mode == "stochastic" and cfg.write.max_pulses == 15
    assert cfg.read.forward == Periphery(dac_bits=7, adc_bits=9, out_noise=0.06)
    assert cfg.read.read_noise == "equilibrium"
    assert device_config("pcm").time.drift_nu == 0.05 and device_config("fefet").response.table_g[-1] == 1.0
    assert device_config("ideal") == TileConfig(device=Device(weight_omega=0.01))


def test_a_parameter_of_another_response_model_is_refused(tmp_path) -> None:
    """A response model's parameter is an error under another model, unless at its default; a preset's parameters
    of its own model give way when the response is changed on top of it."""
    with pytest.raises(CrossbarConfigError,
                       match='crossbar.gamma_up is a parameter of response = "exponential", not "soft_bounds"'):
        device_config("ideal", response="soft_bounds", gamma_up=1.0)
    with pytest.raises(TargetError, match='crossbar.slope_up is a parameter of response = "soft_bounds"'):
        targets.open("crossbar", MLP, preset="reram-exp", slope_up=0.5)
    assert device_config("ideal", response="soft_bounds", gamma_up=0).response == SoftBounds()
    assert device_config("reram-exp", response="soft_bounds", slope_up=0.5).response == SoftBounds(slope_up=0.5)
    path = tmp_path / "measured.toml"
    path.write_text('preset = "reram-exp"\nresponse = "table"\ntable_g = [0, 1]\ntable_up = [1, 0.5]\n'
                    'table_down = [0.5, 1]\n')
    cfg = device_config(str(path))
    assert cfg.response == TableResponse((0.0, 1.0), (1.0, 0.5), (0.5, 1.0)) and cfg.device.up_down == -0.538


def test_a_new_response_model_is_one_class() -> None:
    """Subclassing ``ResponseModel`` registers a model: its fields become crossbar keys and its closed form runs."""

    @dataclass(frozen=True)
    class Doubled(ResponseModel):
        name: ClassVar[str] = "test_doubled"
        factor: float = 2.0

        def advance(self, g, move, c, buf):
            return g + self.factor * move.sign * move.amount

    try:
        cfg = device_config("ideal", response="test_doubled", factor=3.0, dw_min=0.01, pulse_mode="count")
        assert cfg.response == Doubled(3.0)
        with pytest.raises(CrossbarConfigError, match='crossbar.factor is a parameter of response = "test_doubled"'):
            device_config("ideal", factor=3.0)
        array = PairArray(cfg, (4, 5), torch.Generator().manual_seed(0), torch.device("cpu"), torch.float64, 1.0)
        array.program(torch.zeros(4, 5, dtype=torch.float64), torch.Generator(), 0.0)
        array.write(torch.full((4, 5), 2 * 2 * 0.01, dtype=torch.float64), torch.Generator(), 0.0)  # 2 pulses each
        torch.testing.assert_close(array.pos.g, torch.full((4, 5), 0.5 + 3 * 2 * 0.01, dtype=torch.float64))
        torch.testing.assert_close(array.neg.g, torch.full((4, 5), 0.5 - 3 * 2 * 0.01, dtype=torch.float64))
    finally:
        RESPONSES.pop("test_doubled")


def test_separate_backward_periphery() -> None:
    cfg = device_config("ideal", adc_bits=8, backward={"adc_bits": 5})
    assert cfg.read.forward.adc_bits == 8 and cfg.read.transposed.adc_bits == 5
    assert device_config("ideal", adc_bits=8).read.transposed.adc_bits == 8


def test_bad_program_and_update_keep_the_devices() -> None:
    _, xb = _pair(MLP, preset="ecram-li")
    before = xb.read_weights()
    bad = dict(before)
    bad["w1"] = torch.full_like(before["w1"], float("nan"))
    with pytest.raises(ValueError, match="w1"):
        xb.program(bad)
    with pytest.raises(ValueError, match="shape"):
        xb.apply_update({"w1": torch.zeros(3, 3)})
    for n, w in before.items():
        assert torch.equal(xb.read_weights()[n], w)


def test_use_before_program_raises() -> None:
    xb = targets.open("crossbar", MLP)
    with pytest.raises(TargetError, match="program"):
        xb.read_weights()
    with pytest.raises(TargetError, match="program"):
        xb.apply_update({})


def test_two_trains_do_not_cancel_on_asymmetric_devices() -> None:
    """Equal and opposite trains leave symmetric devices alone but drag asymmetric ones (down steps smaller).

    Each device of a differential pair gets one up and one down train of 5e-4; with up_down = 0.3 both
    rise by 0.3 * 5e-4 towards their bound, so the weight stays while the pair loses headroom.
    """
    spec = MLP
    w = init_parameters(spec, 1, torch.float64)
    for up_down in (0.0, 0.3):
        xb = targets.open("crossbar", spec, dtype="float64", up_down=up_down, update="two_trains")
        xb.program(w)
        before = {n: (a.pos.g.clone(), a.neg.g.clone()) for n, a in xb.arrays.items()}
        train = {n: 1e-3 * xb.arrays[n].scale * torch.ones_like(t) for n, t in w.items()}
        zero = {n: torch.zeros_like(t) for n, t in w.items()}
        xb.apply_update(Update(zero, (train, train)))
        for n, a in xb.arrays.items():
            for g, g0 in zip((a.pos.g, a.neg.g), before[n]):
                torch.testing.assert_close(g - g0, torch.full_like(g, up_down * 5e-4), atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(xb.read_weights()[n], w[n], atol=1e-12, rtol=0)


def test_two_trains_mode_needs_trains() -> None:
    _, xb = _pair(MLP, update="two_trains")
    with pytest.raises(TargetError, match="two pulse trains"):
        xb.apply_update({"w1": torch.zeros(12, 36, dtype=torch.float64)})


def test_a_bad_second_train_writes_nothing() -> None:
    _, xb = _pair(MLP, update="two_trains")
    before = xb.read_weights()
    good = {"w1": torch.full((12, 36), 1e-3, dtype=torch.float64)}
    with pytest.raises(ValueError, match="w1"):
        xb.apply_update(Update({}, (good, {"w1": torch.full((12, 36), float("nan"), dtype=torch.float64)})))
    for n, w in before.items():
        assert torch.equal(xb.read_weights()[n], w)


def test_equilibrium_read_noise_only_on_the_last_step() -> None:
    """With read noise at equilibrium only, a phase settles like a noiseless one and only its reading is noisy."""
    _, quiet = _pair(MLP, preset="ideal")
    _, noisy = _pair(MLP, out_noise=0.5, read_noise="equilibrium")
    x, _ = _batch(MLP)
    a, b = quiet.relax(x, 40), noisy.relax(x, 40)
    assert b.residual.max() < 1e-6  # the settling part saw no noise
    diff = max((s - t).abs().max() for s, t in zip(a.states, b.states))
    assert diff > 1e-3


@pytest.mark.gpu
def test_cpu_and_cuda_agree_when_available() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    w = init_parameters(MLP, 1, torch.float64)
    out = []
    for device in ("cpu", "cuda"):
        xb = targets.open("crossbar", MLP, preset="ecram-li", device=device, dtype="float64", read_noise="equilibrium",
                          w_read_noise=0.0, out_noise=0.0)
        xb.program(w)
        out.append(xb.relax(_batch(MLP)[0], 20).states[-1].cpu())
    torch.testing.assert_close(out[0], out[1], atol=1e-9, rtol=0)


def test_config_crossbar_table_is_validated(idx_dataset) -> None:
    text = tiny_config_text(idx_dataset)
    with pytest.raises(config.ConfigError, match=r"\[crossbar\] table is given but target.name = 'reference'"):
        config.loads(text, ["crossbar.preset=ideal"])
    with pytest.raises(config.ConfigError, match=r"crossbar.up_down = 3.0 is invalid"):
        config.loads(text, ["target.name=crossbar", "crossbar.up_down=3.0"])
    with pytest.raises(config.ConfigError, match=r"optim.momentum = 0"):
        config.loads(text, ["target.name=crossbar", "crossbar.update=two_trains"])


def test_training_on_ideal_crossbar_equals_reference_training(idx_dataset, tmp_path) -> None:
    """The whole loop (momentum, weight decay, checkpoints) on the ideal crossbar gives the reference's run."""
    summaries = {}
    for name in ("reference", "crossbar"):
        extra = '[target]\nname = "%s"\ndtype = "float64"\n' % name
        if name == "crossbar":
            extra += '[crossbar]\npreset = "ideal"\n'
        cfg = config.loads(tiny_config_text(idx_dataset, epochs=2, extra=extra))
        summaries[name] = train(cfg, tmp_path / name, progress=False, log=lambda m: None)
    assert summaries["crossbar"]["test_accuracy"] == summaries["reference"]["test_accuracy"]
    assert math.isclose(summaries["crossbar"]["test_loss"], summaries["reference"]["test_loss"], rel_tol=1e-6)
    stored = (tmp_path / "crossbar" / "config.toml").read_text()
    assert "[crossbar]" in stored


def test_training_with_two_trains_on_a_device(idx_dataset, tmp_path) -> None:
    """Two-train writes run through the loop and learn the tiny task on a mildly asymmetric device."""
    extra = ('[target]\nname = "crossbar"\n[crossbar]\nupdate = "two_trains"\nup_down = 0.05\ndw_min = 0.001\n'
             'pulse_mode = "stochastic"\nweight_omega = 0.15\n')
    text = tiny_config_text(idx_dataset, epochs=3, extra=extra).replace("momentum = 0.9", "momentum = 0.0")
    text = text.replace("weight_decay = 1e-4", "weight_decay = 0.0")
    summary = train(config.loads(text), tmp_path / "run", progress=False, log=lambda m: None)
    assert summary["test_accuracy"] > 0.6  # chance is 0.25
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["target"] == "crossbar"


def test_device_report_counts_pulses_and_energy() -> None:
    _, xb = _pair(MLP, dw_min=0.01, pulse_mode="count", pulse_energy_pj=2.0)
    delta = {"w1": torch.zeros(12, 36, dtype=torch.float64)}
    delta["w1"][0, 0] = 3 * 0.01 * 2 * xb.arrays["w1"].scale  # 3 pulses on each device of the pair
    xb.apply_update(delta)
    report = xb.device_report()
    assert report["pulses_total"] == 6
    assert report["pulses_per_device_max"] == 3
    assert report["write_energy_uj"] == pytest.approx(6 * 2.0 * 1e-6)


def test_ir_drop_reads_use_the_analytic_model_of_each_device_array() -> None:
    """With ir_drop, a forward read is scale (v @ analytic(G+) - v @ analytic(G-)), and it is weaker than ideal."""
    from targets.crossbar.ir_drop import analytic

    _, xb = _pair(MLP, ir_drop=1e-3)
    geo = MLP.layers[0]
    x, _ = _batch(MLP)
    v = x.flatten(1)
    got, _ = xb._reads.forward(geo, xb.weights["w1"], x)
    a = xb.arrays["w1"]
    expected = a.scale * (analytic(a.pos.g.t(), v, 1e-3) - analytic(a.neg.g.t(), v, 1e-3))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-9)
    ideal = v @ xb.weights["w1"].t()
    assert (got - ideal).abs().max() > 1e-4


def test_ir_drop_refuses_convolutions() -> None:
    with pytest.raises(TargetError, match="dense layers only"):
        targets.open("crossbar", CONV, ir_drop=1e-3)


@pytest.mark.parametrize("name", ["symmetric", "one_sided"])
def test_two_phase_terms_add_up_to_the_ep_direction(name: str) -> None:
    """On a target that writes two pulse trains the estimator returns the two phase terms; their difference is
    the usual EP direction."""
    ref, xb = _pair(MLP, update="two_trains")
    x, y = _batch(MLP)
    plain = make_estimator(name, EP)(ref, x, y, torch.Generator())
    split = make_estimator(name, EP)(xb, x, y, torch.Generator())
    assert plain.parts is None and split.parts is not None
    for n, d in plain.direction.items():
        torch.testing.assert_close(split.direction[n], d, atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(split.parts[0][n] - split.parts[1][n], d, atol=1e-12, rtol=1e-9)
