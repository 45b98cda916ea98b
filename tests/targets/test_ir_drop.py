"""Tests for targets.crossbar.ir_drop: the exact nodal solve against hand-solved circuits and KCL at every node,
and the fast model against the exact solve."""

from __future__ import annotations

import pytest
import torch

from targets.crossbar.ir_drop import analytic, effective_conductance, nodal_solve, nodal_voltages

F64 = torch.float64
RS = (1e-4, 1e-3, 1e-2)
SHAPES = ((8, 8), (16, 16), (8, 16), (16, 8))
SEEDS = (0, 1, 2)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def array(m: int, n: int, batch: int = 4, seed: int = 0, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    """Conductances and inputs uniform in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(m, n, generator=gen, dtype=F64)
    v = torch.rand(batch, m, generator=gen, dtype=F64)
    return g.to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (16, 16)])
def test_zero_resistance_is_the_ideal_matmul(shape, dtype):
    g, v = array(*shape, dtype=dtype)
    ideal = v @ g
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.equal(effective_conductance(g, 0.0), g)
    assert torch.equal(analytic(g, v, 0.0), ideal)
    torch.testing.assert_close(analytic(g, v, 0.0, iterations=3), ideal, **tol)
    torch.testing.assert_close(nodal_solve(g, v, 0.0), ideal, **tol)


def test_one_device_is_in_series_with_two_segments():
    g = torch.tensor([[0.7]], dtype=F64)
    v = torch.tensor([[0.3], [-1.2], [2.0]], dtype=F64)
    for r in (1e-3, 0.05, 0.5):
        expected = v / (1 / g + 2 * r)
        torch.testing.assert_close(nodal_solve(g, v, r), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(analytic(g, v, r), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(analytic(g, v, r, iterations=2), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("r", [1e-2, 0.3])
def test_one_row_two_columns(r):
    """v -r- R0 -r- R1; device j from Rj to Cj, and Cj -r- ground: a ladder solved by series/parallel reduction."""
    g0, g1 = 0.8, 0.35
    v = torch.tensor([[1.0], [-0.4]], dtype=F64)
    y0 = 1 / (1 / g0 + r)
    y1 = 1 / (1 / g1 + 2 * r)
    v_r0 = v[:, 0] / (1 + r * (y0 + y1))
    expected = torch.stack([y0 * v_r0, y1 * v_r0], -1)
    g = torch.tensor([[g0, g1]], dtype=F64)
    torch.testing.assert_close(nodal_solve(g, v, r), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("r", [1e-2, 0.3])
def test_two_rows_one_column(r):
    """Row i reaches the bottom column node C1 through a0 = 1/(2r + 1/G0) and a1 = 1/(r + 1/G1); C1 -r- ground."""
    g0, g1 = 0.6, 0.9
    v = torch.tensor([[1.0, 0.5], [0.2, -0.7]], dtype=F64)
    a0 = 1 / (2 * r + 1 / g0)
    a1 = 1 / (r + 1 / g1)
    v_c1 = (a0 * v[:, 0] + a1 * v[:, 1]) / (a0 + a1 + 1 / r)
    g = torch.tensor([[g0], [g1]], dtype=F64)
    torch.testing.assert_close(nodal_solve(g, v, r), (v_c1 / r)[:, None], rtol=1e-12, atol=0)


def test_node_voltages_satisfy_kcl_at_every_node():
    m, n, r = 5, 7, 0.02
    g, v = array(m, n, batch=3, seed=4)
    v[1] -= 0.5
    vr, vc = nodal_voltages(g, v, r)
    zeros_col, zeros_row = torch.zeros(3, m, 1, dtype=F64), torch.zeros(3, 1, n, dtype=F64)
    row = torch.cat([v[:, :, None], vr], -1)
    row_in = (row[..., :-1] - row[..., 1:]) / r
    row_out = torch.cat([row_in[..., 1:], zeros_col], -1)
    col = torch.cat([vc, zeros_row], -2)
    col_out = (col[..., :-1, :] - col[..., 1:, :]) / r
    col_in = torch.cat([zeros_row, col_out[..., :-1, :]], -2)
    device = g * (vr - vc)
    scale = device.abs().max()
    assert (row_in - row_out - device).abs().max() <= 1e-10 * scale
    assert (col_in + device - col_out).abs().max() <= 1e-10 * scale
    sensed = col_out[..., -1, :]
    torch.testing.assert_close(nodal_solve(g, v, r), sensed, rtol=1e-10, atol=0)
    torch.testing.assert_close(row_in[..., 0].sum(-1), sensed.sum(-1), rtol=1e-10, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", RS)
def test_sweeps_converge_to_the_exact_solve(shape, r):
    for seed in SEEDS:
        g, v = array(*shape, seed=seed)
        torch.testing.assert_close(analytic(g, v, r, iterations=40), nodal_solve(g, v, r), rtol=1e-10, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", RS)
def test_analytic_error_is_small_against_the_ir_drop_itself(shape, r):
    """Error as a fraction of max |ideal - exact| (the ideal model scores 1). Measured: iterations=0 <= 0.048,
    iterations=4 <= 0.0014 over these shapes, r and seeds."""
    for seed in SEEDS:
        g, v = array(*shape, seed=seed)
        exact, ideal = nodal_solve(g, v, r), v @ g
        effect = (ideal - exact).abs().max()
        assert effect >= 1e-3 * ideal.abs().max()
        errors = [((analytic(g, v, r, iterations=k) - exact).abs().max() / effect).item() for k in (0, 1, 2, 4)]
        assert errors[0] <= 0.06
        assert errors[-1] <= 0.005
        assert all(a >= b for a, b in zip(errors, errors[1:])), errors


def test_currents_fall_as_resistance_grows():
    g, v = array(12, 10, batch=6, seed=3)
    rs = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
    for model in (nodal_solve, analytic, lambda g, v, r: analytic(g, v, r, iterations=2)):
        currents = torch.stack([model(g, v, r) for r in rs])
        assert (currents[1:] < currents[:-1]).all()
        assert (currents[-1] > 0).all()


@pytest.mark.parametrize("r", RS)
def test_float32_agrees_with_float64(r):
    g, v = array(16, 16, seed=5)
    for model, rtol in ((nodal_solve, 1e-4), (analytic, 1e-5), (lambda g, v, r: analytic(g, v, r, 4), 1e-5)):
        lo = model(g.float(), v.float(), r)
        assert lo.dtype == torch.float32
        torch.testing.assert_close(lo.double(), model(g, v, r), rtol=rtol, atol=0)


def test_leading_dimensions_of_v():
    g, v = array(6, 4, batch=6, seed=6)
    r = 1e-2
    for model in (nodal_solve, analytic, lambda g, v, r: analytic(g, v, r, iterations=2)):
        flat = model(g, v, r)
        torch.testing.assert_close(model(g, v.reshape(2, 3, 6), r), flat.reshape(2, 3, 4), rtol=1e-12, atol=0)
        torch.testing.assert_close(model(g, v[0], r), flat[0], rtol=1e-12, atol=0)


def test_rejects_bad_arguments():
    g, v = array(4, 3)
    with pytest.raises(ValueError):
        analytic(g, v[:, :3], 1e-3)
    with pytest.raises(ValueError):
        nodal_solve(g, v, -1e-3)
    with pytest.raises(ValueError):
        analytic(g, v, float("nan"))
    with pytest.raises(ValueError):
        analytic(g, v, 1e-3, iterations=-1)


def test_gradients():
    g, v = array(5, 4, batch=3, seed=7)
    g.requires_grad_(True)
    v.requires_grad_(True)
    for model in (nodal_solve, analytic, lambda g, v, r: analytic(g, v, r, iterations=2)):
        assert torch.autograd.gradcheck(lambda g, v: model(g, v, 2e-2), (g, v))


@pytest.mark.gpu
@needs_cuda
def test_cuda_matches_cpu():
    g, v = array(16, 16, seed=8)
    for model in (nodal_solve, analytic, lambda g, v, r: analytic(g, v, r, iterations=4)):
        torch.testing.assert_close(model(g.cuda(), v.cuda(), 1e-2).cpu(), model(g, v, 1e-2), rtol=1e-9, atol=0)
