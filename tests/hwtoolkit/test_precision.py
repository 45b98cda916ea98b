"""Compute precisions: the context manager's global flags, and the EP update's cosine against float64."""

import pytest
import torch

from hwtoolkit.diagnostics.precision import (UpdateFidelity, accepted_precisions, agreement, judge_precisions,
                                             reference_run, update_fidelity)
from hwtoolkit.network import ConvLayer, NetworkSpec, init_parameters
from hwtoolkit.network.precision import PRECISIONS, check_precision, compute_precision, tf32_flags

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPECS = {
    "mlp": NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="ce"),
    "conv": NetworkSpec(input_shape=(2, 11, 11), conv=(ConvLayer(3, 3, padding=1, pool="max"),
                                                       ConvLayer(4, 2, pool="avg")), hidden=(5,), classes=3),
}
STEPS = {"free_steps": 30, "nudged_steps": 8, "beta": 0.5}
FLOAT32_COSINE = 0.99999  # float32 vs float64: ~1e-7 relative rounding per step; measured 1 - cos < 1e-9 here


def problem(name):
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(8, *spec.input_shape, generator=gen)
    y = torch.randint(0, spec.classes, (8,), generator=gen)
    return spec, init_parameters(spec, 7), x, y


@pytest.fixture(scope="module", params=sorted(SPECS))
def measured(request):
    """float32 and bfloat16 on the CPU against one float64 reference, for each network."""
    spec, params, x, y = problem(request.param)
    ref = reference_run(spec, params, x, y, device="cpu", **STEPS)
    return {p: update_fidelity(spec, params, x, y, precision=p, device="cpu", reference=ref, **STEPS)
            for p in ("float32", "bfloat16")}


@pytest.fixture
def odd_flags():
    """Start from non-default TF32 flags (matmul on, cuDNN off), so a restore to the defaults would show.

    Set by hand: monkeypatch cannot undo them (torch's backend modules hide the attribute from its lookup).
    """
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
    yield tf32_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize(("name", "device", "inside"), [
    ("float32", "cpu", (False, False)),
    ("float32", "cuda", (False, False)),
    ("tf32", "cuda", (True, True)),
    ("tf32", "cpu", (False, False)),  # TF32 is a CUDA format: on a CPU, tf32 is float32
    ("bfloat16", "cpu", (False, False)),
])
def test_flags_are_set_inside_and_restored_after(odd_flags, name, device, inside):
    assert odd_flags == (True, False)
    with compute_precision(name, device) as precision:
        assert precision.name == name
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == inside
    assert tf32_flags() == odd_flags


@pytest.mark.parametrize("name", ["float32", "tf32", "bfloat16"])
def test_flags_are_restored_when_the_block_raises(odd_flags, name):
    with pytest.raises(RuntimeError, match="inside"):
        with compute_precision(name, "cuda" if name == "tf32" else "cpu"):
            assert tf32_flags() != odd_flags or name != "tf32"
            raise RuntimeError("inside")
    assert tf32_flags() == odd_flags
    assert not torch.is_autocast_enabled("cpu")


def test_bfloat16_autocasts_matmuls_but_not_the_rest():
    a = torch.rand(3, 4)
    with compute_precision("bfloat16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        product = a @ a.t()
        assert product.dtype == torch.bfloat16
        assert (product + torch.zeros(3, 3)).dtype == torch.float32  # a state built from it stays float32
    assert not torch.is_autocast_enabled("cpu")
    assert (a @ a.t()).dtype == torch.float32


def test_float32_turns_an_enclosing_autocast_off():
    a = torch.rand(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with compute_precision("float32", "cpu"):
            assert (a @ a.t()).dtype == torch.float32
        assert (a @ a.t()).dtype == torch.bfloat16


def test_unknown_precisions_and_devices_are_named():
    assert set(PRECISIONS) == {"float32", "tf32", "bfloat16", "float16"}
    with pytest.raises(ValueError, match=r"precision = 'fp8' is not known; valid: \['bfloat16', 'float16'"):
        check_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="device = 'meta'"):
        check_precision("float32", "meta")
    with pytest.raises(ValueError, match="'float16' needs a CUDA device"):
        with compute_precision("float16", "cpu"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="'float16' needs a CUDA device"):
        update_fidelity(*problem("mlp"), precision="float16", device="cpu", **STEPS)
    assert check_precision("float16", "cuda").autocast == torch.float16  # the check itself needs no GPU


def test_float32_on_cpu_matches_float64(measured):
    r = measured["float32"]
    assert r.worst_cosine >= FLOAT32_COSINE, r.as_dict()
    assert max(a.relative_error for a in r.parameters.values()) < 1e-4
    assert r.max_state_difference < 1e-5
    assert r.passes() and r.precision == "float32" and r.device == "cpu"
    assert r.clip_flips == 0.0 and r.pool_flips == 0.0  # no unit or max-pool window changed branch


def test_bfloat16_on_cpu_is_measurably_worse_but_a_cosine(measured):
    f32, bf16 = measured["float32"], measured["bfloat16"]
    assert -1.0 <= bf16.worst_cosine <= 1.0
    assert bf16.worst_cosine < f32.worst_cosine
    assert 1 - bf16.worst_cosine > 100 * (1 - f32.worst_cosine)  # 8 mantissa bits against 24
    assert max(a.relative_error for a in bf16.parameters.values()) > 1e-3
    assert bf16.max_state_difference > 1e-4
    assert set(bf16.parameters) == set(f32.parameters)
    assert 0.0 <= bf16.clip_flips <= 1.0 and 0.0 <= bf16.pool_flips <= 1.0


def test_judgement_accepts_by_the_worst_parameter():
    spec, params, x, y = problem("mlp")
    judged = judge_precisions(spec, params, x, y, precisions=["float32", "bfloat16"], **STEPS)
    assert judged.accepted == ("float32", "bfloat16")  # bf16 keeps 1 - cos ~ 3e-5 on this small MLP
    strict = 1 - (1 - judged.results["bfloat16"].worst_cosine) / 2  # between float32's and bfloat16's worst
    assert accepted_precisions(judged.results.values(), strict) == ("float32",)
    assert judged.as_dict()["accepted"] == ["float32", "bfloat16"]
    with pytest.raises(ValueError, match="threshold = 1.5"):
        judge_precisions(spec, params, x, y, precisions=["float32"], threshold=1.5, **STEPS)


def test_agreement_of_edge_cases():
    u = torch.tensor([1.0, 2.0])
    assert agreement(u, u).cosine == pytest.approx(1.0) and agreement(u, u).relative_error == 0.0
    assert agreement(-u, u).cosine == pytest.approx(-1.0)
    assert agreement(torch.zeros(2), torch.zeros(2)) == agreement(u, u).__class__(1.0, 0.0)
    assert agreement(u, torch.zeros(2)).cosine == 0.0 and agreement(torch.zeros(2), u).cosine == 0.0


# --------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_cuda_precisions_against_float64(spec_name):
    spec, params, x, y = problem(spec_name)
    judged = judge_precisions(spec, params, x, y, precisions=["float32", "tf32", "bfloat16", "float16"],
                              device="cuda", **STEPS)
    for r in judged.results.values():
        assert isinstance(r, UpdateFidelity) and r.device.startswith("cuda")
        assert -1.0 <= r.worst_cosine <= 1.0
    # TF32 off for cuBLAS and cuDNN: float32 on the GPU is as close to float64 as on the CPU
    assert judged.results["float32"].worst_cosine >= FLOAT32_COSINE
    assert judged.results["bfloat16"].worst_cosine < judged.results["float32"].worst_cosine


@needs_cuda
@pytest.mark.gpu
def test_cuda_autocast_and_flags_inside():
    a = torch.rand(8, 8, device="cuda")
    before = tf32_flags()
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        with compute_precision(name, "cuda"):
            assert (a @ a).dtype == dtype and tf32_flags() == (False, False)
    with compute_precision("tf32", "cuda"):
        assert tf32_flags() == (True, True) and (a @ a).dtype == torch.float32
    assert tf32_flags() == before and not torch.is_autocast_enabled("cuda")
