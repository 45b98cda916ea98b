"""Conv layers and pooling in the fixed-point model: the integer kernels against torch, and whole networks
against the Brevitas power-of-two network on the reference target (docs/quantize.md#conv-layers-and-pooling)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from hwtoolkit.network import layers as L
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from quantize import integer_conv
from quantize.fixed_point import FixedPointNetwork

from test_fixed_point import lsb_gap, pair, phases


def ints(*shape, low=-7, high=8, seed=0):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stride, padding, kernel", [(1, 0, 3), (2, 1, 3), (1, 2, 2), (3, 0, 2)])
def test_integer_conv_kernels_equal_torch_in_float64(stride, padding, kernel):
    """Small integers: torch's float64 results are exact, so the integer kernels must give them exactly."""
    x, w = ints(3, 2, 9, 8, seed=1), ints(4, 2, kernel, kernel, seed=2)
    z = integer_conv.conv2d(x, w, stride, padding)
    assert torch.equal(z.double(), F.conv2d(x.double(), w.double(), stride=stride, padding=padding))
    g = ints(*z.shape, seed=3)
    out_h, out_w = [(z.shape[d] - 1) * stride - 2 * padding + kernel for d in (2, 3)]
    expected = F.conv_transpose2d(g.double(), w.double(), stride=stride, padding=padding,
                                  output_padding=(9 - out_h, 8 - out_w))
    assert torch.equal(integer_conv.conv_transpose2d(g, w, stride, padding, (9, 8)).double(), expected)
    assert torch.equal(integer_conv.conv2d_weight(x, g, kernel, stride, padding).double(),
                       conv2d_weight(x.double(), w.shape, g.double(), stride=stride, padding=padding))


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_breaks_ties_as_torch_does(k):
    """Values in {0, 1}: most windows hold several maxima; the index must be torch's (the first, row-major)."""
    z = ints(4, 3, 7, 8, low=0, high=2, seed=4)
    values, index = integer_conv.max_pool(z, k)
    expected, expected_index = F.max_pool2d(z.double(), k, return_indices=True)
    assert torch.equal(values.double(), expected) and torch.equal(index, expected_index)
    ties = (integer_conv._blocks(z, k) == values.unsqueeze(-1)).sum(-1) > 1
    assert ties.float().mean() > 0.3  # the test exercises ties
    s = ints(*values.shape, seed=5)
    assert torch.equal(integer_conv.max_unpool(s, index, (7, 8)).double(),
                       F.max_unpool2d(s.double(), expected_index, k, output_size=(7, 8)))


def test_sum_pool_and_spread_are_adjoint_and_match_the_average_pool():
    z, s = ints(2, 3, 9, 6, seed=6), ints(2, 3, 4, 3, seed=7)
    total = integer_conv.sum_pool(z, 2)
    assert torch.equal(total.double() / 4, F.avg_pool2d(z.double(), 2))
    assert int((total * s).sum()) == int((z * integer_conv.spread(s, 2, (9, 6))).sum())


CONV_CASES = list(itertools.product(["max", "avg", "none"], ["ce", "mse"], ["synchronous", "alternating"],
                                    [True, False]))


def conv_spec(pool, output="ce", update="synchronous", tied=True, stride=1, padding=1, **kw):
    return NetworkSpec(input_shape=(1, 10, 10), conv=(ConvLayer(3, 3, stride, padding, pool, 2),
                                                      ConvLayer(4, 2, 1, 0, pool, 1 if pool == "none" else 2)),
                       hidden=(7,), classes=4, output=output, update=update, tied=tied, **kw)


@pytest.mark.parametrize("pool, output, update, tied", CONV_CASES)
def test_conv_free_phase_is_bit_exact_against_the_brevitas_network(pool, output, update, tied):
    """Two conv layers (one padded, one fed back through by the other) and a dense layer: in float64 every sum
    of the Brevitas network is exact, so the integer model gives the same states and scores."""
    t, fp = pair(conv_spec(pool, output, update, tied))
    x = torch.rand(60, 1, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r, f = t.relax(x, 15), fp.relax(fp.encode_input(x), 15)
    assert lsb_gap(r.states, f.states, fp.state_frac) == 0
    assert torch.equal(r.logits.double(), f.scores.double() * 2.0 ** -fp.score_frac)
    assert all(len(torch.unique(s)) > 4 for s in f.states[:2])  # the conv layers use the format, not its ends


@pytest.mark.parametrize("pool, granularity, stride", [("max", "per_channel", 2), ("avg", "per_tensor", 2),
                                                        ("max", "per_tensor", 1), ("avg", "per_channel", 1)])
def test_conv_nudged_phases_are_bit_exact(pool, granularity, stride):
    """MSE and CE nudges on conv networks (CE through the integer softmax on both sides), strided and per-channel."""
    for output, beta in (("mse", 0.5), ("ce", -0.25)):
        t, fp = pair(conv_spec(pool, output, stride=stride, padding=0) if stride == 1 else
                     NetworkSpec(input_shape=(1, 10, 10), conv=(ConvLayer(3, 3, 2, 1, pool, 2),), hidden=(7,),
                                 classes=4, output=output), granularity=granularity)
        g = torch.Generator().manual_seed(2)
        x, y = torch.rand(60, 1, 10, 10, generator=g, dtype=torch.float64), torch.randint(0, 4, (60,), generator=g)
        nudged, fnudged, ffree = phases(t, fp, x, y, beta, 15, 8)
        assert lsb_gap(nudged.states, fnudged.states, fp.state_frac) == 0
        assert lsb_gap(nudged.states, ffree.states, fp.state_frac) > 0  # the nudge moved something


def relax_with(fp, name, replacement, xi, steps):
    """``fp.relax`` with one integer kernel replaced (a deliberately wrong rule)."""
    original = getattr(integer_conv, name)
    try:
        setattr(integer_conv, name, replacement)
        return fp.relax(xi, steps)
    finally:
        setattr(integer_conv, name, original)


def test_max_pool_ties_in_a_network_follow_the_float_engine():
    """Images of 4x4 constant blocks and 1x1 convs: layer 1's states are constant on 2x2 blocks, so every window
    of layer 2's pool starts as a four-way tie and its feedback lands where the tie rule puts it; the rule that
    takes the last maximum instead moves it, and the states differ."""
    spec = NetworkSpec(input_shape=(1, 8, 8), conv=(ConvLayer(3, 1, 1, 0, "max", 2), ConvLayer(4, 1, 1, 0, "max", 2)),
                       classes=4, output="mse")
    t, fp = pair(spec, seed=2)  # (seed 0's layer 2 stays at 0 and feeds nothing back)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 1, 2, 2, generator=g, dtype=torch.float64).repeat_interleave(4, 2).repeat_interleave(4, 3)
    xi = fp.encode_input(x)
    r, f = t.relax(x, 12), fp.relax(xi, 12)
    assert lsb_gap(r.states, f.states, fp.state_frac) == 0

    def last_maximum(z, k):
        values, index = MAX_POOL(z.flip(2, 3), k)
        h, w = z.shape[2], z.shape[3]
        return values.flip(2, 3), ((h - 1 - index // w) * w + (w - 1 - index % w)).flip(2, 3)
    assert lsb_gap(r.states, relax_with(fp, "max_pool", last_maximum, xi, 12).states, fp.state_frac) > 0


MAX_POOL, SUM_POOL = integer_conv.max_pool, integer_conv.sum_pool


def test_average_pool_rounds_the_state_once_half_to_even():
    """hard_sigmoid_half halves the pooled mean: the window sum, the mean's /4 and the /2 go into one
    round-half-even shift, as the Brevitas network rounds the exact value; a mean first cut to the conv's
    fractional bits (a second rounding) gives other states."""
    t, fp = pair(conv_spec("avg", "mse", activation="hard_sigmoid_half"))
    x = torch.rand(60, 1, 10, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    xi = fp.encode_input(x)
    r = t.relax(x, 10)
    assert lsb_gap(r.states, fp.relax(xi, 10).states, fp.state_frac) == 0
    truncated = relax_with(fp, "sum_pool", lambda z, k: SUM_POOL(z, k) >> 2 << 2, xi, 10)
    assert lsb_gap(r.states, truncated.states, fp.state_frac) > 0


def test_float32_conv_network_is_exact_within_a_24_bit_accumulator():
    """float32 sums are exact while the accumulator needs at most 24 bits: then the states are identical."""
    t, fp = pair(conv_spec("max", "ce"), dtype="float32", weight_bits=6, state_bits=6)
    assert fp.accumulator_bits <= 24
    x = torch.rand(200, 1, 10, 10, generator=torch.Generator().manual_seed(5))
    r, f = t.relax(x, 20), fp.relax(fp.encode_input(x), 20)
    assert lsb_gap(r.states, f.states, fp.state_frac) == 0


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_accumulator_width_bounds_conv_accumulators(pool):
    """Largest inputs and states everywhere: no accumulator reaches the width's limit."""
    spec = conv_spec(pool, "mse")
    _, fp = pair(spec, weight_bits=8, state_bits=8)
    batch = 2
    xi = fp.encode_input(torch.ones(batch, 1, 10, 10))
    smax = (1 << fp.state_bits) - 1
    states = [torch.full((batch, math.prod(g.out_shape)), smax) for g in spec.layers]
    worst = 0
    for i, plan in enumerate(fp.plans):
        acc = fp.forward_term(i, xi if i == 0 else states[i - 1])
        if plan.feedback is not None:
            acc = acc + fp.feedback_term(i, states[i], states[i + 1])
        worst = max(worst, int(acc.abs().max()))
        assert int(acc.abs().max()) <= plan.bound
    assert worst < 2 ** (fp.accumulator_bits - 1)


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
def test_weight_terms_equal_the_float_engines_gradients(pool):
    """dPhi/dW and dPhi/db in integers equal the engine's (batch-mean, float64) at the same states."""
    spec = conv_spec(pool, "mse")
    t, fp = pair(spec)
    x = torch.rand(30, 1, 10, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    xi = fp.encode_input(x)
    f = fp.relax(xi, 10)
    terms = fp.weight_terms(xi, f.states)
    params = t.quant.effective_params()
    below = xi.double().view(-1, 1, 10, 10) * 2.0 ** -int(fp.input_format.frac)
    for geo, s in zip(spec.layers, f.states):
        s = s.double().view(-1, *geo.out_shape) * 2.0 ** -fp.state_frac
        ctx = L.pool_context(geo, params[f"w{geo.index}"].double(), below)
        w, b = terms[f"w{geo.index}"], terms[f"b{geo.index}"]
        assert torch.equal(w.data.double() * 2.0 ** -int(w.frac) / 30, L.weight_grad(geo, below, s, ctx))
        assert torch.equal(b.data.double() * 2.0 ** -int(b.frac) / 30, L.bias_grad(geo, s))
        below = s


def test_conv_weight_file_round_trip_relaxes_identically(tmp_path):
    _, fp = pair(conv_spec("max", "ce", tied=False), granularity="per_channel")
    path = tmp_path / "conv.epqw"
    fp.save(path)
    back = FixedPointNetwork.load(path)
    assert back.spec == fp.spec and back.formats() == fp.formats()
    xi = fp.encode_input(torch.rand(20, 1, 10, 10))
    assert all(torch.equal(a, b) for a, b in zip(fp.relax(xi, 10).states, back.relax(xi, 10).states))
