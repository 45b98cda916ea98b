"""The crossbar's read path against aihwkit-lightning 2.1.0's analog linear layer (one forward read, live).

Both models map the same settings: a static input range ``in_bound`` (lightning: ``input_range`` with its
learning off), DAC ``inp_res = 1 / (2^dac_bits - 2)`` and ADC ``out_res = 1 / (2^adc_bits - 2)`` on symmetric
ranges, ``out_bound`` and ``out_noise`` in units of the largest |weight| times the input range. The crossbar's unit
is one full-range weight, so the weights are programmed with ``weight_omega = 1`` (the largest |w| takes a pair's
whole range) to make the two units equal.

* Quantisation and clipping (no noise): outputs equal to 1e-6 of the output bound on every element.
* Output noise (no ADC): the normalized residuals of both have the same distribution (two-sample KS at 99.9%
  over 64,000 values) and the same variance (F-test at 99.9%); the crossbar with 5% more output noise fails both.
* Device read noise: lightning's per-weight Gaussian weight noise (``ADD_NORMAL``, std ``std_dev`` x max |w|,
  drawn once per forward call and shared by the batch) against the crossbar's (``sqrt(2) w_read_noise`` per weight,
  the pair's two devices, drawn per sample): with one sample per read the output distributions agree (KS at 99.9%).

A difference of semantics, not of physics: without a DAC (``dac_bits = 0``) the crossbar does not clip inputs to
``in_bound``; lightning's input range always does (the quantisation test includes inputs beyond the range).

Not checkable against lightning (no counterpart there): IR drop (checked against badcrossbar), read averaging,
separate converters of the transposed (feedback) reads, when read noise is drawn during a relaxation (per step
or at the equilibrium), and convolutions' per-read noisy kernels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import f as f_dist
from scipy.stats import ks_2samp

from hwtoolkit.network.spec import LayerGeometry
from targets.crossbar.config import device_config
from targets.crossbar.periphery import ArrayReads

ALPHA = 1e-3
IN, OUT = 96, 40


def weights_and_inputs(batch: int, seed: int = 0, spread: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights, and inputs uniform in [-spread, spread] (by default a third beyond the input range)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT, IN, generator=gen) * 0.1
    x = (torch.rand(batch, IN, generator=gen) * 2 - 1) * spread
    return w, x


def crossbar_read(w: torch.Tensor, x: torch.Tensor, seed: int = 1, **params) -> torch.Tensor:
    """One forward read through the crossbar's read path of the weights ``w`` (omega = 1: scale = max |w|)."""
    cfg = device_config("ideal", weight_omega=1.0, **params)
    gen = torch.Generator().manual_seed(seed)
    scale = float(w.abs().max())
    reads = ArrayReads(cfg.read, True, lambda name: scale, lambda name, t: None, lambda: gen)
    geo = LayerGeometry(index=1, kind="dense", in_shape=(IN,), out_shape=(OUT,), weight_shape=(OUT, IN))
    with torch.no_grad():
        return reads.forward(geo, w, x)[0]


def lightning_read(w: torch.Tensor, x: torch.Tensor, seed: int = 2, dac_bits: int = 0, adc_bits: int = 0,
                   in_bound: float = 1.0, out_bound: float = 0.0, out_noise: float = 0.0,
                   weight_noise: float = 0.0, per_call: int = 0) -> torch.Tensor:
    """aihwkit-lightning's AnalogLinear with the same settings; ``per_call`` > 0 reads that many samples per
    forward call (lightning draws its weight noise once per call)."""
    from aihwkit_lightning.nn import AnalogLinear
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig
    from aihwkit_lightning.simulator.parameters.enums import WeightNoiseInjectionType

    rpu = TorchInferenceRPUConfig()
    rpu.forward.inp_res = 1 / (2 ** dac_bits - 2) if dac_bits else -1
    rpu.forward.out_res = 1 / (2 ** adc_bits - 2) if adc_bits else -1
    rpu.forward.out_bound = out_bound
    rpu.forward.out_noise = out_noise
    rpu.pre_post.input_range.enable = True
    rpu.pre_post.input_range.learn_input_range = False
    rpu.pre_post.input_range.init_from_data = 0
    rpu.pre_post.input_range.init_value = in_bound
    if weight_noise:
        rpu.modifier.noise_type = WeightNoiseInjectionType.ADD_NORMAL
        rpu.modifier.std_dev = weight_noise
    layer = AnalogLinear(IN, OUT, bias=False, rpu_config=rpu)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.input_range.fill_(in_bound)
    layer.train(out_noise > 0 or weight_noise > 0)  # lightning adds noise only in training mode
    torch.manual_seed(seed)
    with torch.no_grad():
        if per_call:
            return torch.cat([layer(chunk) for chunk in x.split(per_call)])
        return layer(x)


@pytest.mark.parametrize("dac_bits, adc_bits, in_bound, out_bound", [
    (7, 9, 1.0, 2.0), (4, 6, 1.0, 1.5), (7, 9, 0.5, 3.0), (8, 0, 1.0, 4.0), (0, 5, 2.0, 1.0)])
def test_quantisation_and_clipping_match(dac_bits, adc_bits, in_bound, out_bound):
    w, x = weights_and_inputs(256)
    ours = crossbar_read(w, x, dac_bits=dac_bits, adc_bits=adc_bits, in_bound=in_bound, out_bound=out_bound)
    theirs = lightning_read(w, x, dac_bits=dac_bits, adc_bits=adc_bits, in_bound=in_bound,
                            out_bound=out_bound if adc_bits else 0.0)
    bound = out_bound * float(w.abs().max()) * in_bound
    if adc_bits:
        assert (ours.abs() <= bound * (1 + 1e-6)).all() and (ours.abs() == bound).any()  # clipping happened
    assert (ours - theirs).abs().max() <= 1e-6 * bound


def test_a_wrong_converter_fails():
    w, x = weights_and_inputs(256)
    ours = crossbar_read(w, x, dac_bits=7, adc_bits=8, out_bound=2.0)
    theirs = lightning_read(w, x, dac_bits=7, adc_bits=9, out_bound=2.0)
    assert (ours - theirs).abs().max() > 1e-3 * 2.0 * float(w.abs().max())


def residuals(read, w: torch.Tensor, x: torch.Tensor, **kw) -> np.ndarray:
    """(noisy read - noiseless read) / (max |w| x in_bound): the noise in output units."""
    exact = x.clamp(-1, 1) @ w.t()
    return ((read(w, x, **kw) - exact) / float(w.abs().max())).flatten().double().numpy()


def test_output_noise_statistics_match():
    w, x = weights_and_inputs(1600, spread=1.0)  # without a DAC the crossbar does not clip inputs: keep them inside
    ours = residuals(crossbar_read, w, x, out_noise=0.06)
    theirs = residuals(lightning_read, w, x, out_noise=0.06)
    wrong = residuals(crossbar_read, w, x, out_noise=0.063)
    n = len(ours)
    assert ks_2samp(ours, theirs).pvalue > ALPHA
    ratio = ours.var() / theirs.var()
    lo, hi = f_dist.ppf(ALPHA / 2, n - 1, n - 1), f_dist.ppf(1 - ALPHA / 2, n - 1, n - 1)
    assert lo < ratio < hi, ratio
    assert not lo < wrong.var() / theirs.var() < hi
    assert abs(theirs.std() - 0.06) < 4 * 0.06 / math.sqrt(2 * n)


def test_device_read_noise_matches_lightnings_weight_noise():
    """sqrt(2) w_read_noise (two devices per weight, each w_read_noise of the range) = lightning's std_dev."""
    w, x = weights_and_inputs(4000, spread=1.0)
    std = 0.02
    ours = residuals(crossbar_read, w, x, w_read_noise=std / math.sqrt(2))
    theirs = residuals(lightning_read, w, x, weight_noise=std, per_call=1)
    assert ks_2samp(ours, theirs).pvalue > ALPHA
    wrong = residuals(crossbar_read, w, x, w_read_noise=1.05 * std / math.sqrt(2))
    assert ks_2samp(wrong, theirs).pvalue < ALPHA
