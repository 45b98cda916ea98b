"""Compiled and captured relaxation (``network.compiled``) against the plain ``dynamics.relax``.

The Inductor tests compile a handful of tiny networks (the ``slow`` mark: each compile is seconds of gcc on
a cold cache); the CUDA-graph tests run only where CUDA is present.
"""

import pytest
import torch

from hwtoolkit.network import ConvLayer, NetworkSpec, init_parameters, relax
from hwtoolkit.network.compiled import MODES, CompiledRelaxer
from hwtoolkit.network.layers import Reads

DENSE_CE = NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="ce")
# two max-pooling conv layers, so that a step (not only the input drive) pools and unpools, as in the ConvNet
CONV_MAX = NetworkSpec(input_shape=(2, 8, 8), conv=(ConvLayer(3, 3, padding=1), ConvLayer(4, 3, padding=1)),
                       hidden=(5,), classes=3)
CONV_ALT = NetworkSpec(input_shape=(2, 8, 8), conv=(ConvLayer(3, 3, padding=1), ConvLayer(4, 3, padding=1)),
                       hidden=(5,), classes=3, update="alternating")
LEAKY_MSE = NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 9), classes=4, output="mse", dynamics="leaky", eps=0.5)
SPECS = {"dense_ce": DENSE_CE, "conv_max": CONV_MAX, "conv_alt": CONV_ALT, "leaky_mse": LEAKY_MSE}
CHUNK = 3
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def batch(spec, dtype, device="cpu", n=5):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, *spec.input_shape, generator=gen, dtype=dtype)
    y = torch.randint(0, spec.classes, (n,), generator=gen)
    params = {k: v.to(device) for k, v in init_parameters(spec, 7, dtype).items()}
    return params, x.to(device), y.to(device)


def assert_close(a, b, tol):
    """Same states, logits and residual (``a`` from a relaxer, ``b`` from ``dynamics.relax``)."""
    assert a.steps == b.steps
    for sa, sb in zip(a.states, b.states):
        assert (sa - sb).abs().max().item() <= tol
    assert (a.logits - b.logits).abs().max().item() <= tol
    assert (a.residual - b.residual).abs().max().item() <= tol


def moved(a, b):
    return max((sa - sb).abs().max().item() for sa, sb in zip(a.states, b.states))


# ---------------------------------------------------------------- eager and argument checks (no compiling)


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_eager_mode_is_plain_relax(spec):
    p, x, y = batch(spec, torch.float64)
    r = CompiledRelaxer(spec, "eager", chunk=CHUNK)
    free, plain = r.relax(p, x, 7), relax(spec, p, x, 7)
    assert_close(free, plain, 0.0)
    assert_close(r.relax(p, x, 5, 0.5, y, init=free.states), relax(spec, p, x, 5, 0.5, y, init=plain.states), 0.0)
    assert_close(r.relax(p, x, 40, stop_tolerance=1e-4), relax(spec, p, x, 40, stop_tolerance=1e-4), 0.0)
    assert r.cache_size == 0


def test_bad_arguments_are_named():
    p, x, y = batch(DENSE_CE, torch.float32)
    with pytest.raises(ValueError, match="'turbo'.*valid"):
        CompiledRelaxer(DENSE_CE, "turbo")
    with pytest.raises(ValueError, match="chunk = 0"):
        CompiledRelaxer(DENSE_CE, "inductor", chunk=0)
    for mode in ("cuda_graph", "inductor_cuda_graph"):
        with pytest.raises(ValueError, match=f"{mode}.*needs CUDA tensors.*cpu"):
            CompiledRelaxer(DENSE_CE, mode).relax(p, x, 5)
    r = CompiledRelaxer(DENSE_CE, "inductor")
    noisy = Reads(input=lambda t: t + 0.01)
    with pytest.raises(ValueError, match="reads = Reads.*not supported by mode 'inductor'"):
        r.relax(p, x, 5, reads=noisy)
    with pytest.raises(ValueError, match="read afresh every step"):
        r.relax(p, x, 5, drive=lambda: torch.zeros(5, 12))
    with pytest.raises(ValueError, match="steps = 0"):
        r.relax(p, x, 0)
    with pytest.raises(ValueError, match="needs targets y"):
        r.relax(p, x, 5, beta=0.5)
    with pytest.raises(ValueError, match="stop_tolerance = -1"):
        r.relax(p, x, 5, stop_tolerance=-1)
    assert r.cache_size == 0
    assert set(MODES) == {"eager", "inductor", "cuda_graph", "inductor_cuda_graph"}


# ---------------------------------------------------------------- Inductor on the CPU


@pytest.fixture(scope="module")
def dense_ce_inductor():
    """One relaxer for the dense-CE tests, so they share its compiled chunks (free 3 and 1 steps, nudged 3)."""
    return CompiledRelaxer(DENSE_CE, "inductor", chunk=CHUNK)


@pytest.mark.slow
def test_inductor_free_and_nudged_phases_match_relax(dense_ce_inductor):
    r, tol = dense_ce_inductor, TOL[torch.float64]
    p, x, y = batch(DENSE_CE, torch.float64)
    free, plain = r.relax(p, x, 4), relax(DENSE_CE, p, x, 4)  # chunks of 3 and 1 steps
    assert_close(free, plain, tol)
    plus = r.relax(p, x, 6, 0.5, y, init=free.states)
    assert_close(plus, relax(DENSE_CE, p, x, 6, 0.5, y, init=plain.states), tol)
    compiled = r.cache_size
    assert compiled == 3
    minus = r.relax(p, x, 6, -0.5, y, init=free.states)  # beta is a tensor input: no new compile
    assert_close(minus, relax(DENSE_CE, p, x, 6, -0.5, y, init=plain.states), tol)
    assert r.cache_size == compiled
    assert moved(plus, minus) > 1e-4  # the nudge acted, so the comparisons are not vacuous


@pytest.mark.slow
def test_inductor_stops_at_a_chunk_end(dense_ce_inductor):
    r, stop = dense_ce_inductor, 1e-6
    p, x, _ = batch(DENSE_CE, torch.float64)
    plain = relax(DENSE_CE, p, x, 60, stop_tolerance=stop)
    assert 1 < plain.steps < 60
    early = r.relax(p, x, 60, stop_tolerance=stop)
    assert early.steps % CHUNK == 0 and plain.steps <= early.steps < plain.steps + CHUNK
    assert early.residual.max().item() <= stop
    assert_close(early, relax(DENSE_CE, p, x, early.steps), TOL[torch.float64])
    # a tolerance never met runs every step
    assert r.relax(p, x, 6, stop_tolerance=1e-30).steps == 6


@pytest.mark.slow
def test_inductor_sees_parameter_updates(dense_ce_inductor):
    r, tol = dense_ce_inductor, TOL[torch.float64]
    p, x, _ = batch(DENSE_CE, torch.float64)
    before = r.relax(p, x, 6)
    compiled = r.cache_size
    p["w2"].add_(0.3)  # in place, as training updates
    p["b1"].add_(-0.1)
    after = r.relax(p, x, 6)
    assert moved(before, after) > 1e-3
    assert_close(after, relax(DENSE_CE, p, x, 6), tol)
    fresh = {k: v.clone() * 1.1 for k, v in p.items()}  # new tensors of the same layout: inputs, no recompile
    assert_close(r.relax(fresh, x, 6), relax(DENSE_CE, fresh, x, 6), tol)
    assert r.cache_size == compiled


@pytest.mark.slow
def test_inductor_alternating_conv_max_pool_matches_relax():
    p, x, _ = batch(CONV_ALT, torch.float64)
    r = CompiledRelaxer(CONV_ALT, "inductor", chunk=CHUNK)
    assert_close(r.relax(p, x, 6), relax(CONV_ALT, p, x, 6), TOL[torch.float64])
    assert r.cache_size == 1


@pytest.mark.slow
def test_inductor_leaky_mse_float32_nudged_matches_relax():
    spec, tol = LEAKY_MSE, TOL[torch.float32]
    p, x, y = batch(spec, torch.float32)
    free = relax(spec, p, x, 8)
    r = CompiledRelaxer(spec, "inductor", chunk=CHUNK)
    nudged = r.relax(p, x, 6, 0.8, y, init=free.states)
    assert_close(nudged, relax(spec, p, x, 6, 0.8, y, init=free.states), tol)
    assert moved(nudged, free) > 1e-4


# ---------------------------------------------------------------- CUDA graphs (run where CUDA is present)

GRAPH_MODES = ["cuda_graph", "inductor_cuda_graph"]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", GRAPH_MODES)
@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_graph_phases_match_relax(mode, spec):
    tol = TOL[torch.float64]
    p, x, y = batch(spec, torch.float64, "cuda")
    r = CompiledRelaxer(spec, mode, chunk=CHUNK)
    free, plain = r.relax(p, x, 7), relax(spec, p, x, 7)  # graphs of 3 and 1 steps
    assert_close(free, plain, tol)
    plus = r.relax(p, x, 6, 0.5, y, init=free.states)
    assert_close(plus, relax(spec, p, x, 6, 0.5, y, init=plain.states), tol)
    captured = r.cache_size
    assert captured == (3 if mode == "cuda_graph" else 6)  # graphs (+ compiled chunks)
    minus = r.relax(p, x, 6, -0.5, y, init=free.states)  # beta lives in a static buffer: same graph
    assert_close(minus, relax(spec, p, x, 6, -0.5, y, init=plain.states), tol)
    assert r.cache_size == captured
    assert moved(plus, minus) > 1e-4
    again = r.relax(p, x, 7)  # replaying from fresh zeros reproduces the first phase
    assert_close(again, plain, tol)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_graph_float32_matches_relax(mode):
    p, x, y = batch(DENSE_CE, torch.float32, "cuda")
    r = CompiledRelaxer(DENSE_CE, mode, chunk=CHUNK)
    free, plain = r.relax(p, x, 9), relax(DENSE_CE, p, x, 9)
    assert_close(free, plain, 1e-5)
    assert_close(r.relax(p, x, 3, 1.0, y, init=free.states), relax(DENSE_CE, p, x, 3, 1.0, y, init=plain.states),
                 1e-5)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_graph_stops_at_a_chunk_end(mode):
    stop = 1e-6
    p, x, _ = batch(DENSE_CE, torch.float64, "cuda")
    r = CompiledRelaxer(DENSE_CE, mode, chunk=CHUNK)
    plain = relax(DENSE_CE, p, x, 60, stop_tolerance=stop)
    early = r.relax(p, x, 60, stop_tolerance=stop)
    assert early.steps % CHUNK == 0 and plain.steps <= early.steps < plain.steps + CHUNK
    assert early.residual.max().item() <= stop
    assert_close(early, relax(DENSE_CE, p, x, early.steps), TOL[torch.float64])


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_graph_reads_parameters_in_place_and_recaptures_new_ones(mode):
    tol = TOL[torch.float64]
    p, x, _ = batch(CONV_MAX, torch.float64, "cuda")
    r = CompiledRelaxer(CONV_MAX, mode, chunk=CHUNK)
    before = r.relax(p, x, 6)
    captured = r.cache_size
    p["w2"].add_(0.2)  # in place, weights the captured step reads (w1 only feeds the drive, computed outside)
    p["b2"].add_(-0.1)
    after = r.relax(p, x, 6)
    assert r.cache_size == captured
    assert moved(before, after) > 1e-3
    assert_close(after, relax(CONV_MAX, p, x, 6), tol)
    fresh = {k: v.clone() * 0.9 for k, v in p.items()}  # new tensors: a new capture, the old graph dropped
    assert_close(r.relax(fresh, x, 6), relax(CONV_MAX, fresh, x, 6), tol)
    assert r.cache_size == captured


@needs_cuda
@pytest.mark.gpu
def test_graph_batch_size_is_a_cache_key():
    p, x, _ = batch(DENSE_CE, torch.float64, "cuda", n=6)
    r = CompiledRelaxer(DENSE_CE, "cuda_graph", chunk=CHUNK)
    full, part = r.relax(p, x, 6), r.relax(p, x[:4], 6)
    assert r.cache_size == 2
    assert_close(part, relax(DENSE_CE, p, x[:4], 6), TOL[torch.float64])
    assert_close(full, relax(DENSE_CE, p, x, 6), TOL[torch.float64])
