"""The aihwkit target: EP on aihwkit analog tiles (reads through the tiles, pulsed updates), live."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import targets
from hwtoolkit import config
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from hwtoolkit.training.loop import train
from targets import TargetError, Update
from tests.conftest import tiny_config_text

MLP = NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4, output="ce")


def opened(rpu_config: str = "EcRamPreset", **options) -> tuple[targets.Target, dict[str, torch.Tensor]]:
    target = targets.open("aihwkit", MLP, rpu_config=rpu_config, seed=1, **options)
    weights = init_parameters(MLP, seed=0)
    target.program(weights)
    return target, weights


def test_it_is_registered():
    assert "aihwkit" in targets.available()
    assert targets.get("aihwkit").name == "aihwkit"


def test_weights_read_back_as_programmed():
    target, weights = opened()
    back = target.read_weights()
    for name, w in weights.items():
        torch.testing.assert_close(back[name], w.float(), rtol=1e-5, atol=1e-6)


def test_the_relaxation_reads_the_tiles():
    """The free phase through the tiles' noisy reads (EcRamPreset's IO: converters, output noise) is near the
    exact one (cosine > 0.9 on this small network with small weights), and not equal to it."""
    target, weights = opened()
    exact = targets.open("reference", MLP, dtype="float32")
    exact.program(weights)
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    ours, ref = target.relax(x, 12).states, exact.relax(x, 12).states
    for a, b in zip(ours, ref):
        assert 0 < (a - b).abs().max() < 0.5
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9


@pytest.mark.parametrize("rpu_config", ["EcRamPreset", "CapacitorPreset"])
def test_the_update_is_pulsed_and_follows_the_increment(rpu_config):
    """On a single-device configuration with little noise an increment of about 20 pulses per weight lands close to
    it (cosine > 0.9, norm within 40%), and not exactly (stochastic pulse trains, device steps). (A Tiki-Taka
    configuration writes into its fast device and reads its slow one: the training test below covers it.)"""
    target, weights = opened(rpu_config)
    before = target.read_weights()
    gen = torch.Generator().manual_seed(3)
    scale = float(weights["w1"].abs().max()) / (0.15 * 1.0)
    delta = {"w1": torch.randn(weights["w1"].shape, generator=gen) * 20 * 0.002 * scale}
    target.apply_update(delta)
    after = target.read_weights()
    change = (after["w1"] - before["w1"]).flatten()
    assert F.cosine_similarity(change, delta["w1"].flatten(), dim=0) > 0.9
    assert 0.6 < float(change.norm() / delta["w1"].norm()) < 1.4
    assert not torch.allclose(change, delta["w1"].flatten(), rtol=1e-3)
    torch.testing.assert_close(after["w_out"], before["w_out"])


def test_two_trains_are_two_pulsed_updates():
    target, weights = opened(update="two_trains")
    assert target.capabilities.update_trains
    delta = {"w1": torch.zeros_like(weights["w1"])}
    with pytest.raises(TargetError, match="two pulse trains"):
        target.apply_update(delta)
    a = {"w1": torch.full_like(weights["w1"], 0.02)}
    b = {"w1": torch.full_like(weights["w1"], 0.01)}
    before = target.read_weights()["w1"]
    report = target.apply_update(Update({"w1": a["w1"] - b["w1"]}, trains=(a, b)))
    assert report.details["pulsed_updates"] == 2
    moved = float((target.read_weights()["w1"] - before).mean())
    assert 0.005 < moved < 0.015


def test_any_rpu_configuration_can_be_registered():
    """An RPU configuration of one's own (here a soft-bounds device without noise) is opened by name."""
    from aihwkit.simulator.configs import SingleRPUConfig, SoftBoundsDevice

    from targets.aihwkit.target import register_rpu_config

    register_rpu_config("quiet_soft_bounds", lambda: SingleRPUConfig(device=SoftBoundsDevice(dw_min_std=0.0)))
    target, weights = opened("quiet_soft_bounds")
    assert type(target.rpu_config.device).__name__ == "SoftBoundsDevice"
    torch.testing.assert_close(target.read_weights()["w1"], weights["w1"], rtol=1e-5, atol=1e-6)
    with pytest.raises(TargetError, match="register_rpu_config"):
        register_rpu_config("", None)


def test_bad_options_are_refused_by_name():
    with pytest.raises(TargetError, match="target.rpu_config = 'NoSuchPreset' is invalid.*EcRamPreset"):
        targets.open("aihwkit", MLP, rpu_config="NoSuchPreset")
    with pytest.raises(TargetError, match="target.update"):
        targets.open("aihwkit", MLP, update="three")
    conv = NetworkSpec(input_shape=(1, 6, 6), conv=(ConvLayer(channels=2, kernel=3),), hidden=(), classes=4)
    with pytest.raises(TargetError, match="dense layers only"):
        targets.open("aihwkit", conv)


@pytest.mark.parametrize("rpu_config", ["EcRamPreset", "TikiTakaReRamSBPreset"])
def test_training_on_aihwkit_tiles_learns(rpu_config, idx_dataset, tmp_path):
    """The whole learning loop on aihwkit tiles learns the tiny task (chance 0.25), a single device and a
    Tiki-Taka compound device alike."""
    extra = f'[target]\nname = "aihwkit"\nrpu_config = "{rpu_config}"\n'
    summary = train(config.loads(tiny_config_text(idx_dataset, epochs=3, extra=extra)), tmp_path / "run",
                    progress=False, log=lambda m: None)
    assert summary["test_accuracy"] > 0.6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["target"] == "aihwkit"
