"""Tests for targets.reference (the exact PyTorch target) and targets.options (device/dtype parsing)."""

from __future__ import annotations

import pytest
import torch

import targets
from hwtoolkit.network import NetworkSpec, Relaxation, dynamics, init_parameters
from hwtoolkit.network.spec import ConvLayer
from targets.base import TargetError
from targets.options import parse_device, parse_dtype
from targets.reference import ReferenceTarget

DENSE = NetworkSpec(input_shape=(1, 6, 6), hidden=(8,), classes=3)
CONV = NetworkSpec(input_shape=(1, 6, 6), conv=(ConvLayer(2, 3, padding=1),), hidden=(8,), classes=3)
SPECS = {"dense": DENSE, "conv": CONV}
BATCH = 5
STEPS = 6

# program()/apply_update() reject bad parameter dicts; the interface does not pin the exception type
# (check_parameters raises ValueError today), so accept either.
REJECTED = (ValueError, TargetError)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 1, 6, 6, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (BATCH,), generator=gen)
    return x, y


def opened(spec: NetworkSpec, seed: int = 0, **options: object) -> tuple[ReferenceTarget, dict[str, torch.Tensor]]:
    t = targets.open("reference", spec, **options)
    assert isinstance(t, ReferenceTarget)
    params = init_parameters(spec, seed, t.dtype)
    t.program(params)
    return t, params


def assert_relaxations_equal(a: Relaxation, b: Relaxation, **tol: float) -> None:
    assert a.steps == b.steps
    assert len(a.states) == len(b.states)
    for sa, sb in zip(a.states, b.states):
        torch.testing.assert_close(sa, sb, **tol)
    torch.testing.assert_close(a.logits, b.logits, **tol)
    torch.testing.assert_close(a.residual, b.residual, **tol)


def random_states(spec: NetworkSpec, seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand((BATCH, *s), generator=gen, dtype=torch.float64).to(dtype) for s in spec.state_shapes]


# --------------------------------------------------------------------------- options and capabilities


def test_capabilities_default() -> None:
    t = targets.open("reference", DENSE)
    caps = t.capabilities
    assert (caps.name, caps.device, caps.dtype, caps.exact) == ("reference", "cpu", "float32", True)


def test_capabilities_float64() -> None:
    caps = targets.open("reference", DENSE, device="cpu", dtype="float64").capabilities
    assert (caps.device, caps.dtype) == ("cpu", "float64")


@pytest.mark.parametrize("dtype", ["float16", "double", "int32", torch.float16, torch.bfloat16])
def test_bad_dtype_names_option(dtype: object) -> None:
    with pytest.raises(TargetError, match=r"target\.dtype = .*(float16|double|int32|bfloat16).*float32"):
        targets.open("reference", DENSE, dtype=dtype)


@pytest.mark.parametrize("device", ["tpu", "not a device", "meta"])
def test_bad_device_names_option(device: str) -> None:
    with pytest.raises(TargetError, match=rf"target\.device = '{device}'"):
        targets.open("reference", DENSE, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda_names_option(device: str) -> None:
    with pytest.raises(TargetError, match=rf"target\.device = '{device}'.*CUDA is not available"):
        targets.open("reference", DENSE, device=device)


def test_parse_options_accept_valid_values() -> None:
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("float64") is torch.float64
    assert parse_dtype(torch.float64) is torch.float64
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")


# --------------------------------------------------------------------------- program / read_weights


def test_use_before_program_raises() -> None:
    t = targets.open("reference", DENSE)
    x, _ = inputs()
    with pytest.raises(TargetError, match=r"program"):
        t.relax(x, STEPS)
    with pytest.raises(TargetError, match=r"program"):
        t.read_weights()
    with pytest.raises(TargetError, match=r"program"):
        t.apply_update({"b1": torch.zeros(8)})


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_program_and_read_weights_round_trip(spec_name: str) -> None:
    spec = SPECS[spec_name]
    t, params = opened(spec)
    w = t.read_weights()
    assert set(w) == set(spec.parameter_shapes())
    for n, p in params.items():
        assert w[n].device.type == "cpu"
        assert torch.equal(w[n], p)


def test_program_converts_dtype() -> None:
    t = targets.open("reference", DENSE, dtype="float64")
    params32 = init_parameters(DENSE, 0, torch.float32)
    t.program(params32)
    for n, w in t.read_weights().items():
        assert w.dtype == torch.float64
        assert torch.equal(w, params32[n].double())


def test_program_copies_its_input() -> None:
    t, params = opened(DENSE)
    expected = {n: p.clone() for n, p in params.items()}
    for p in params.values():
        p.add_(1.0)
    for n, w in t.read_weights().items():
        assert torch.equal(w, expected[n])


def test_read_weights_returns_copies() -> None:
    t, params = opened(DENSE)
    w = t.read_weights()
    for v in w.values():
        v.mul_(0.0).add_(7.0)
    again = t.read_weights()
    for n, p in params.items():
        assert torch.equal(again[n], p)
        assert torch.equal(t.params[n], p)


def _bad_params(kind: str) -> tuple[dict[str, torch.Tensor], str]:
    p = init_parameters(DENSE, 99)
    if kind == "missing":
        del p["w_out"]
        return p, r"missing.*w_out"
    if kind == "unknown":
        p["w9"] = torch.zeros(3)
        return p, r"unknown.*w9"
    if kind == "shape":
        p["w1"] = torch.zeros(8, 35)
        return p, r"'w1'.*\(8, 35\).*\(8, 36\)"
    if kind == "nan":
        p["b1"][3] = float("nan")
        return p, r"'b1'.*NaN"
    if kind == "inf":
        p["w_out"][0, 0] = float("inf")
        return p, r"'w_out'.*infinite"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unknown", "shape", "nan", "inf"])
def test_program_rejects_bad_parameters_and_keeps_old(kind: str) -> None:
    t, params = opened(DENSE)
    bad, pattern = _bad_params(kind)
    with pytest.raises(REJECTED, match=pattern):
        t.program(bad)
    w = t.read_weights()
    assert set(w) == set(params)
    for n, p in params.items():
        assert torch.equal(w[n], p)


# --------------------------------------------------------------------------- apply_update


def test_apply_update_adds_exactly_delta() -> None:
    t, params = opened(DENSE, dtype="float64")
    gen = torch.Generator().manual_seed(3)
    delta = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1e-2 for n, p in params.items()}
    report = t.apply_update(delta)
    assert report.saturated == 0
    w = t.read_weights()
    for n, p in params.items():
        assert torch.equal(w[n], p + delta[n])


def test_apply_update_partial_changes_only_given() -> None:
    t, params = opened(DENSE)
    delta = {"b1": torch.full((8,), 0.25)}
    t.apply_update(delta)
    w = t.read_weights()
    assert torch.equal(w["b1"], params["b1"] + 0.25)
    for n in ("w1", "w_out", "b_out"):
        assert torch.equal(w[n], params[n])


def test_apply_update_converts_dtype() -> None:
    t, params = opened(DENSE)  # float32 target
    t.apply_update({"b_out": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)})
    w = t.read_weights()
    assert w["b_out"].dtype == torch.float32
    assert torch.equal(w["b_out"], params["b_out"] + torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("delta", "pattern"),
    [
        ({"w9": torch.zeros(3)}, r"unknown.*w9"),
        ({"b1": torch.zeros(8), "bogus": torch.zeros(1)}, r"unknown.*bogus"),
        ({"b1": torch.zeros(7)}, r"'b1'.*\(7,\)"),
        ({"b1": torch.full((8,), float("nan"))}, r"'b1'.*NaN"),
    ],
)
def test_apply_update_rejects_bad_delta_and_keeps_old(delta: dict, pattern: str) -> None:
    t, params = opened(DENSE)
    with pytest.raises(REJECTED, match=pattern):
        t.apply_update(delta)
    w = t.read_weights()
    for n, p in params.items():
        assert torch.equal(w[n], p)


# --------------------------------------------------------------------------- relax


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_free_relax_matches_dynamics(spec_name: str) -> None:
    spec = SPECS[spec_name]
    t, params = opened(spec)
    x, _ = inputs()
    got = t.relax(x, STEPS)
    ref = dynamics.relax(spec, params, x, STEPS)
    assert_relaxations_equal(got, ref)
    assert tuple(got.states[0].shape) == (BATCH, *spec.state_shapes[0])
    assert got.states[-1].abs().sum() > 0  # a non-trivial phase


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("beta", [0.5, -0.3])
def test_nudged_relax_matches_dynamics(spec_name: str, beta: float) -> None:
    spec = SPECS[spec_name]
    t, params = opened(spec)
    x, y = inputs(1)
    free = t.relax(x, STEPS)
    got = t.relax(x, 3, beta, y, init=free)
    ref_free = dynamics.relax(spec, params, x, STEPS)
    ref = dynamics.relax(spec, params, x, 3, beta, y, list(ref_free.states))
    assert_relaxations_equal(got, ref)
    # nudging made a difference (the test would not notice a dropped beta otherwise)
    not_nudged = dynamics.relax(spec, params, x, 3, 0.0, None, list(ref_free.states))
    assert not torch.allclose(got.logits, not_nudged.logits)


def test_relax_float64_gives_float64_states() -> None:
    t, params = opened(CONV, dtype="float64")
    x, y = inputs()  # float32 input is converted
    got = t.relax(x, STEPS, 0.5, y)
    assert all(s.dtype == torch.float64 for s in got.states)
    assert got.logits.dtype == torch.float64
    ref = dynamics.relax(CONV, params, x.double(), STEPS, 0.5, y)
    assert_relaxations_equal(got, ref)


def test_relax_converts_input_dtype() -> None:
    t, params = opened(DENSE)
    x64, _ = inputs(dtype=torch.float64)
    got = t.relax(x64, STEPS)
    assert got.states[0].dtype == torch.float32
    assert_relaxations_equal(got, dynamics.relax(DENSE, params, x64.float(), STEPS))


@pytest.mark.parametrize("init", [None, "zero"])
def test_init_none_and_zero_start_from_zero(init: object) -> None:
    t, params = opened(DENSE)
    x, _ = inputs()
    t.relax(x, STEPS, init=random_states(DENSE, 7))  # leave non-zero "last" states behind
    got = t.relax(x, 2, init=init)
    assert_relaxations_equal(got, dynamics.relax(DENSE, params, x, 2))


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_init_keep_continues_from_last(spec_name: str) -> None:
    spec = SPECS[spec_name]
    t, params = opened(spec)
    x, _ = inputs()
    first = t.relax(x, 2)
    got = t.relax(x, 3, init="keep")
    ref = dynamics.relax(spec, params, x, 3, init=list(first.states))
    assert_relaxations_equal(got, ref)
    # keeping three times after two steps == five steps from zero for the deterministic dynamics
    assert_relaxations_equal(
        type(got)(got.states, got.logits, 5, got.residual),
        dynamics.relax(spec, params, x, 5),
    )


def test_init_keep_before_any_relax_raises() -> None:
    t, _ = opened(DENSE)
    x, _ = inputs()
    with pytest.raises(TargetError, match=r"keep"):
        t.relax(x, STEPS, init="keep")


def test_init_relaxation_and_list() -> None:
    t, params = opened(CONV)
    x, _ = inputs()
    states = random_states(CONV, 11)
    from_list = t.relax(x, 3, init=states)
    assert_relaxations_equal(from_list, dynamics.relax(CONV, params, x, 3, init=states))
    from_tuple = t.relax(x, 3, init=tuple(states))
    assert_relaxations_equal(from_tuple, from_list)
    as_relaxation = Relaxation(tuple(states), torch.zeros(BATCH, 3), 1, torch.zeros(BATCH))
    assert_relaxations_equal(t.relax(x, 3, init=as_relaxation), from_list)
    # float64 initial states are converted to the target's dtype
    from_f64 = t.relax(x, 3, init=[s.double() for s in states])
    assert from_f64.states[0].dtype == torch.float32
    assert_relaxations_equal(from_f64, from_list)
    # the caller's states were not modified
    for s, s0 in zip(states, random_states(CONV, 11)):
        assert torch.equal(s, s0)


@pytest.mark.parametrize("case", ["batch", "layer_shape", "too_few", "too_many"])
def test_init_wrong_shape_raises(case: str) -> None:
    t, _ = opened(CONV)
    x, _ = inputs()
    states = random_states(CONV, 2)
    if case == "batch":
        states = [s[:2] for s in states]
    elif case == "layer_shape":
        states[0] = torch.zeros(BATCH, 3, 3, 3)
    elif case == "too_few":
        states = states[:1]
    else:
        states = states + [torch.zeros(BATCH, 3)]
    with pytest.raises(TargetError, match=r"initial states have shapes .*expected \[\(5, 2, 3, 3\), \(5, 8\)\]"):
        t.relax(x, 2, init=states)


def test_init_unknown_string_raises() -> None:
    t, _ = opened(DENSE)
    x, _ = inputs()
    with pytest.raises(TargetError, match=r"init = 'warm' is invalid"):
        t.relax(x, 2, init="warm")


# --------------------------------------------------------------------------- input-drive cache


def test_drive_cache_invalidated_by_apply_update() -> None:
    t, params = opened(CONV)
    x, _ = inputs()
    before = t.relax(x, STEPS)
    delta = {"w1": torch.full_like(params["w1"], 0.05), "b1": torch.full_like(params["b1"], -0.1)}
    t.apply_update(delta)
    after = t.relax(x, STEPS)  # the very same x object
    new_params = {n: p + delta.get(n, 0) for n, p in params.items()}
    assert_relaxations_equal(after, dynamics.relax(CONV, new_params, x, STEPS))
    assert not torch.allclose(after.states[0], before.states[0])


def test_drive_cache_invalidated_by_program() -> None:
    t, params = opened(DENSE)
    x, _ = inputs()
    before = t.relax(x, STEPS)
    other = init_parameters(DENSE, 123)
    t.program(other)
    after = t.relax(x, STEPS)
    assert_relaxations_equal(after, dynamics.relax(DENSE, other, x, STEPS))
    assert not torch.allclose(after.states[0], before.states[0])


@pytest.mark.parametrize("modify", ["mul_", "setitem", "copy_"])
def test_drive_cache_invalidated_by_in_place_change_of_x(modify: str) -> None:
    t, params = opened(CONV)
    x, _ = inputs()
    before = t.relax(x, STEPS)
    if modify == "mul_":
        x.mul_(0.5)
    elif modify == "setitem":
        x[0] = 1.0
    else:
        x.copy_(inputs(9)[0])
    after = t.relax(x, STEPS)
    assert_relaxations_equal(after, dynamics.relax(CONV, params, x, STEPS))
    assert not torch.allclose(after.states[0], before.states[0])


def test_drive_cache_distinguishes_inputs() -> None:
    t, params = opened(DENSE)
    x1, _ = inputs(1)
    x2, _ = inputs(2)
    for x in (x1, x2, x1):
        assert_relaxations_equal(t.relax(x, STEPS), dynamics.relax(DENSE, params, x, STEPS))


# --------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_cuda_matches_cpu(spec_name: str, dtype: str, tol: float) -> None:
    # the default precision = "float32" turns TF32 off inside relax (it would make results differ by ~1e-3)
    spec = SPECS[spec_name]
    cpu, params = opened(spec, device="cpu", dtype=dtype)
    gpu = targets.open("reference", spec, device="cuda", dtype=dtype)
    gpu.program(params)
    caps = gpu.capabilities
    assert caps.device.startswith("cuda") and caps.dtype == dtype
    x, y = inputs()
    free_c, free_g = cpu.relax(x, STEPS), gpu.relax(x, STEPS)
    assert free_g.states[0].device.type == "cuda"
    nudged_c = cpu.relax(x, 3, 0.5, y, init=free_c)
    nudged_g = gpu.relax(x, 3, 0.5, y, init=free_g)
    for a, b in ((free_c, free_g), (nudged_c, nudged_g)):
        for sc, sg in zip(a.states, b.states):
            torch.testing.assert_close(sg.cpu(), sc, rtol=tol, atol=tol)
        torch.testing.assert_close(b.logits.cpu(), a.logits, rtol=tol, atol=tol)
    delta = {"b1": torch.full_like(params["b1"], 0.01)}
    cpu.apply_update(delta)
    gpu.apply_update(delta)
    for n, w in cpu.read_weights().items():
        wg = gpu.read_weights()[n]
        assert wg.device.type == "cpu"
        torch.testing.assert_close(wg, w, rtol=0, atol=0)


def test_input_drive_cache_sees_writes_torch_cannot_track():
    """Writes through a shared numpy buffer or ``.data`` leave ``x._version`` alone; the cache must still notice."""
    import numpy as np

    from hwtoolkit.network import dynamics as dyn

    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(8,), classes=3)
    t = targets.open("reference", spec)
    t.program(init_parameters(spec, 0))
    buf = np.random.default_rng(0).random((4, 1, 6, 6)).astype(np.float32)
    x = torch.from_numpy(buf)
    t.relax(x, 3)
    buf[:] = np.random.default_rng(1).random((4, 1, 6, 6))
    assert torch.equal(t.relax(x, 3).states[0], dyn.relax(spec, t.params, x, 3).states[0])
    x.data.copy_(torch.rand(4, 1, 6, 6))
    assert torch.equal(t.relax(x, 3).states[0], dyn.relax(spec, t.params, x, 3).states[0])


# --------------------------------------------------------------------------- solver option


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_anderson_solver_relaxes_with_relax_anderson(spec_name: str) -> None:
    from hwtoolkit.network.anderson import relax_anderson

    spec = SPECS[spec_name]
    t, params = opened(spec, dtype="float64", solver="anderson", anderson_memory=2)
    x, y = inputs(2, torch.float64)
    free = t.relax(x, 300, stop_tolerance=1e-11)
    nudged = t.relax(x, 300, 0.5, y, init=free, stop_tolerance=1e-11)
    ref_free = relax_anderson(spec, params, x, 300, stop_tolerance=1e-11, memory=2)
    ref = relax_anderson(spec, params, x, 300, 0.5, y, list(ref_free.states), stop_tolerance=1e-11, memory=2)
    assert_relaxations_equal(free, ref_free)
    assert_relaxations_equal(nudged, ref)
    assert nudged.steps < 300 and nudged.residual.max() <= 1e-11
    plain = dynamics.relax(spec, params, x, 400, 0.5, y, list(ref_free.states), stop_tolerance=1e-12)
    for a, b in zip(nudged.states, plain.states):
        assert (a - b).abs().max() < 1e-8  # the plain iteration's fixed point


@pytest.mark.parametrize("options, pattern", [
    ({"solver": "newton"}, "target.solver = 'newton'"),
    ({"anderson_memory": 0}, "target.anderson_memory = 0"),
    ({"anderson_memory": 2.5}, "target.anderson_memory = 2.5"),
    ({"anderson_memory": True}, "target.anderson_memory = True"),
    ({"solver": "anderson", "quant": {"weight_bits": 8, "state_bits": 8}}, "solver = 'anderson' cannot be used with"),
    ({"memory_format": "channels_last", "quant": {"weight_bits": 8, "state_bits": 8}}, "memory_format = 'channels_"),
    ({"precision": "bfloat16", "quant": {"weight_bits": 8, "state_bits": 8}}, "precision = 'bfloat16' cannot be"),
])
def test_bad_solver_options_name_the_option(options: dict, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        targets.open("reference", DENSE, **options)


@pytest.mark.parametrize("spec", [CONV, NetworkSpec(input_shape=(1, 6, 6), conv=(ConvLayer(2, 3, padding=1),
                                                                                 ConvLayer(3, 3, padding=1, pool="none")),
                                                          classes=3)])
def test_channels_last_gives_the_same_phases_and_keeps_its_layout(spec: NetworkSpec) -> None:
    plain, params = opened(spec, dtype="float64")
    nhwc, _ = opened(spec, dtype="float64", memory_format="channels_last")
    assert nhwc.params["w1"].is_contiguous(memory_format=torch.channels_last)
    x, y = inputs(3, torch.float64)
    for t in (plain, nhwc):
        t.free = t.relax(x, STEPS)
        t.nudged = t.relax(x, 4, 0.5, y, init=t.free)
    if not spec.hidden:  # a conv state driven by multi-channel states stays NHWC (a dense feedback makes it NCHW)
        assert nhwc.free.states[-1].is_contiguous(memory_format=torch.channels_last)
        assert not plain.free.states[-1].is_contiguous(memory_format=torch.channels_last)
    assert_relaxations_equal(nhwc.free, plain.free, atol=1e-12, rtol=0)
    assert_relaxations_equal(nhwc.nudged, plain.nudged, atol=1e-12, rtol=0)
    delta = {"w1": torch.full_like(params["w1"], 0.01)}
    nhwc.apply_update(delta)
    assert nhwc.params["w1"].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(nhwc.read_weights()["w1"], params["w1"] + 0.01)


def test_bad_memory_format_names_the_option() -> None:
    with pytest.raises(TargetError, match="target.memory_format = 'nhwc'"):
        targets.open("reference", CONV, memory_format="nhwc")


# --------------------------------------------------------------------------- precision option


def test_precision_bfloat16_relaxes_under_autocast_and_restores_flags() -> None:
    from hwtoolkit.network.precision import tf32_flags

    exact, params = opened(CONV)
    low, _ = opened(CONV, precision="bfloat16")
    assert low.capabilities.notes == "precision: bfloat16" and not low.capabilities.exact
    x, y = inputs(4)
    flags = tf32_flags()
    a, b = exact.relax(x, STEPS), low.relax(x, STEPS)
    assert tf32_flags() == flags and not torch.is_autocast_enabled("cpu")
    assert b.states[0].dtype == torch.float32  # states stay float32; only the products are bfloat16
    diff = max((s - t).abs().max().item() for s, t in zip(a.states, b.states))
    assert 1e-4 < diff < 0.1  # bfloat16 products (8 mantissa bits) move the states, but only a little


@pytest.mark.parametrize("options, pattern", [
    ({"precision": "float8"}, "target.precision = 'float8' is not known"),
    ({"precision": "float16"}, "target.precision = 'float16' needs a CUDA device"),
    ({"precision": "bfloat16", "dtype": "float64"}, "needs dtype = 'float32', not 'float64'"),
])
def test_bad_precision_names_the_option(options: dict, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        targets.open("reference", DENSE, **options)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("precision, tol", [("tf32", 3e-2), ("bfloat16", 1e-1)])
def test_cuda_reduced_precision_stays_near_float32(precision: str, tol: float) -> None:
    exact = targets.open("reference", CONV, device="cuda")
    low = targets.open("reference", CONV, device="cuda", precision=precision)
    params = init_parameters(CONV, 0)
    exact.program(params)
    low.program(params)
    x, _ = inputs(5)
    a, b = exact.relax(x, STEPS), low.relax(x, STEPS)
    diff = max((s - t).abs().max().item() for s, t in zip(a.states, b.states))
    assert 0 < diff < tol


# --------------------------------------------------------------------------- compiled relaxation


@pytest.mark.slow
def test_compile_inductor_relaxes_like_the_eager_target() -> None:
    eager, params = opened(DENSE, dtype="float64")
    fused, _ = opened(DENSE, dtype="float64", compile="inductor", compile_chunk=3)
    assert fused.capabilities.notes == "compile: inductor; compile_chunk: 3"
    x, y = inputs(6, torch.float64)
    for t in (eager, fused):
        t.free = t.relax(x, 6)
        t.nudged = t.relax(x, 3, 0.5, y, init=t.free)
    assert_relaxations_equal(fused.free, eager.free, atol=1e-12, rtol=0)
    assert_relaxations_equal(fused.nudged, eager.nudged, atol=1e-12, rtol=0)
    assert fused._relaxer.cache_size > 0
    fused.close()
    assert fused._relaxer.cache_size == 0  # close() lets go of what was compiled (and of captured graph memory)


@pytest.mark.parametrize("options, pattern", [
    ({"compile": "jit"}, "target.compile = 'jit' is invalid"),
    ({"compile": "inductor", "compile_chunk": 0}, "target.compile_chunk = 0"),
    ({"compile": "cuda_graph"}, "needs device = 'cuda'"),
    ({"compile": "inductor", "solver": "anderson"}, "cannot be combined"),
    ({"compile": "inductor", "quant": {"weight_bits": 8, "state_bits": 8}}, "compile = 'inductor' cannot be used"),
])
def test_bad_compile_options_name_the_option(options: dict, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        targets.open("reference", DENSE, **options)


def test_update_is_formed_in_the_targets_precision() -> None:
    """Estimators form the update inside ``compute_context()``: the configured precision, none by default."""
    from hwtoolkit.config import EPConfig
    from hwtoolkit.training.estimators import make_estimator

    exact, params = opened(DENSE)
    low, _ = opened(DENSE, precision="bfloat16")
    with low.compute_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with exact.compute_context():
        assert not torch.is_autocast_enabled("cpu")
    x, y = inputs(7)
    estimate = make_estimator("symmetric", EPConfig(beta=0.5, free_steps=STEPS, nudged_steps=4))
    a = estimate(exact, x, y, torch.Generator()).direction
    b = estimate(low, x, y, torch.Generator()).direction
    assert all(t.dtype == torch.float32 for t in (*a.values(), *b.values()))
    rel = max(((a[n] - b[n]).norm() / a[n].norm()).item() for n in a if a[n].norm() > 0)
    assert 1e-4 < rel < 0.2  # bfloat16 products, including the update's: close to the float32 update, not equal
