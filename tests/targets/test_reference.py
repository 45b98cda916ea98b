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
def test_cuda_matches_cpu(spec_name: str, dtype: str, tol: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # TF32 would make float32 matmuls/convolutions differ by ~1e-3; compare true float32 arithmetic.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
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
