"""The integer fixed-point model against the Brevitas power-of-two network, and the .epqw weight file."""

import itertools
import math
import struct

import pytest
import torch

from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.network.spec import ConvLayer, NetworkSpec
from quantize.fixed_point import (EXP_FRAC_BITS, EXP_TABLE, LOG2E_Q, PROB_FRAC, FixedPointError, FixedPointNetwork,
                                  round_shift, softmax_fixed)
from quantize.weight_file import WeightFileError
from targets.reference import ReferenceTarget


def pair(spec, seed=0, dtype="float64", **quant):
    """A Brevitas pow2 network on the reference target and the fixed-point model of the same weights."""
    t = ReferenceTarget(spec, dtype=dtype, quant={"weight_bits": 6, "state_bits": 5, **quant})
    params = init_parameters(spec, seed)
    params = {n: 1.5 * p for n, p in params.items()}  # larger weights: more units away from 0 and 1
    t.program(params)
    return t, FixedPointNetwork.from_quant(t.quant)


SOFTMAX_ERROR_BOUND = 2.0e-3  # docs/quantize.md#the-integer-softmax: measured 1.63e-3 at most


def lsb_gap(states, fixed, frac):
    return max(int((s.flatten(1) * 2.0 ** frac - f.double()).abs().max()) for s, f in zip(states, fixed))


def phases(t, fp, x, y, beta, free_steps, nudged_steps):
    """A free and a nudged phase on the target's quantized network and on the fixed-point model from the same
    input: (target's nudged phase, model's nudged phase, model's free phase)."""
    xi = fp.encode_input(x)
    free, ffree = t.relax(x, free_steps), fp.relax(xi, free_steps)
    nudged = t.relax(x, nudged_steps, beta=beta, y=y, init=free)
    return nudged, fp.relax(xi, nudged_steps, beta=beta, y=y, init=ffree.states), ffree


def test_round_shift_is_round_half_to_even():
    a = torch.arange(-600, 600)
    for k in range(0, 7):
        assert torch.equal(round_shift(a, k), torch.round(a.double() / 2 ** k).long())
    assert torch.equal(round_shift(a, -3), a * 8)


CASES = list(itertools.product(["ce", "mse"], ["per_tensor", "per_channel"], ["synchronous", "alternating"],
                               [True, False], ["hard_sigmoid", "hard_sigmoid_half"]))


@pytest.mark.parametrize("output, granularity, update, tied, activation", CASES)
def test_free_phase_is_bit_exact_against_the_brevitas_network(output, granularity, update, tied, activation):
    """In float64 the Brevitas pow2 network's sums are exact, so the integer model must match it exactly."""
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(20, 12), classes=4, output=output, update=update, tied=tied,
                       activation=activation)
    t, fp = pair(spec, granularity=granularity)
    x = torch.rand(300, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    r = t.relax(x, 25)
    xi = fp.encode_input(x)
    assert torch.equal(xi, t.quant.input_quant(x).int().long().flatten(1))
    f = fp.relax(xi, 25)
    assert lsb_gap(r.states, f.states, fp.state_frac) == 0
    assert torch.equal(r.logits.double(), f.scores.double() * 2.0 ** -fp.score_frac)
    levels = torch.unique(torch.cat([s.flatten() for s in f.states]))
    assert len(levels) > 8  # the states use the format, not just its ends


def test_normalised_input_uses_a_signed_format():
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(16,), classes=4, input_mean=(0.3,), input_std=(0.2,))
    t, fp = pair(spec)
    assert fp.input_format.signed
    x = torch.rand(200, 1, 6, 6, dtype=torch.float64)  # the dtype the network runs in: the same rounding
    xi = fp.encode_input(x)
    assert xi.min() < 0 < xi.max()
    assert lsb_gap(t.relax(x, 20).states, fp.relax(xi, 20).states, fp.state_frac) == 0


@pytest.mark.parametrize("beta", [0.5, -0.25, 1.0])
def test_mse_nudged_phase_is_bit_exact(beta):
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(16,), classes=4, output="mse")
    t, fp = pair(spec)
    x, y = torch.rand(200, 1, 6, 6), torch.randint(0, 4, (200,))
    nudged, fnudged, ffree = phases(t, fp, x, y, beta, 20, 10)
    assert lsb_gap(nudged.states, fnudged.states, fp.state_frac) == 0
    assert lsb_gap(nudged.states, ffree.states, fp.state_frac) > 0  # the nudge moved something


def test_float32_brevitas_network_is_within_one_lsb():
    spec = NetworkSpec(input_shape=(1, 8, 8), hidden=(64, 32), classes=5)
    t, fp = pair(spec, dtype="float32", weight_bits=8, state_bits=8)
    x = torch.rand(500, 1, 8, 8)
    r, f = t.relax(x, 30), fp.relax(fp.encode_input(x), 30)
    assert lsb_gap(r.states, f.states, fp.state_frac) <= 1
    assert (r.logits.argmax(1) == f.scores.argmax(1)).float().mean() >= 0.99


def test_accumulator_width_bounds_every_accumulator():
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(16, 8), classes=4, output="mse")
    _, fp = pair(spec)
    bits = fp.accumulator_bits
    xi = fp.encode_input(torch.ones(4, 1, 6, 6))  # the largest inputs
    worst = 0
    states = [torch.full((4, n), (1 << fp.state_bits) - 1) for n in (16, 8, 4)]
    for i, plan in enumerate(fp.plans):
        acc = (xi @ plan.forward.t() if i == 0 else states[i - 1] @ plan.forward.t()) + plan.bias
        if plan.feedback is not None:
            acc = acc + states[i + 1] @ plan.feedback
        worst = max(worst, int(acc.abs().max()))
    assert worst < 2 ** (bits - 1)
    assert 8 < bits <= 40


@pytest.mark.parametrize("spec, quant, message", [
    (NetworkSpec(input_shape=(1, 6, 6), hidden=(8,), classes=4), {"scale": "float"}, "power-of-two scales; this network is w6 s5 in8 float"),
    (NetworkSpec(input_shape=(1, 6, 6), conv=(ConvLayer(2, 3, pool="avg", pool_size=3),), classes=4, output="mse"),
     {}, "must be a power of two"),
    (NetworkSpec(input_shape=(1, 6, 6), hidden=(8,), classes=4, activation="sigmoid_2019"), {}, "no fixed-point form"),
    (NetworkSpec(input_shape=(1, 6, 6), hidden=(8,), classes=4), {"state_bits": 0}, "needs quantized weights"),
])
def test_networks_without_a_fixed_point_form_are_refused(spec, quant, message):
    t = ReferenceTarget(spec, quant={"weight_bits": 6, "state_bits": 5, **quant})
    t.program(init_parameters(spec, 0))
    with pytest.raises(FixedPointError, match=message):
        FixedPointNetwork.from_quant(t.quant)


def float_softmax_error(table=EXP_TABLE, seed=0):
    """Largest |softmax_fixed - torch.softmax| (in probability) over random scores of several spreads and formats."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for frac, spread in itertools.product((6, 12, 17), (0.5, 3.0, 12.0)):
        q = torch.round(torch.randn(4000, 10, generator=g, dtype=torch.float64) * spread * 2 ** frac).long()
        p = softmax_fixed(q, frac, table)
        worst = max(worst, float((p.double() / 2 ** PROB_FRAC - torch.softmax(q.double() / 2 ** frac, 1)).abs().max()))
    return worst


def test_exp_table_holds_the_specified_powers_of_two():
    assert len(EXP_TABLE) == 1 << EXP_FRAC_BITS
    assert list(EXP_TABLE) == [round(2 ** 15 * 2 ** (-r / 64)) for r in range(64)]
    assert LOG2E_Q == round(math.log2(math.e) * 2 ** 15)


def test_integer_softmax_sums_to_one_within_half_a_unit_per_class_and_is_monotone():
    g = torch.Generator().manual_seed(3)
    for classes, spread in itertools.product((2, 4, 10, 33), (0.01, 1.0, 50.0)):
        q = torch.round(torch.randn(3000, classes, generator=g) * spread * 2 ** 12).long()
        p = softmax_fixed(q, 12)
        assert p.min() >= 0 and p.max() <= 1 << PROB_FRAC
        assert int((p.sum(1) - (1 << PROB_FRAC)).abs().max()) <= classes // 2
        order = q.argsort(1)
        assert (p.gather(1, order).diff(dim=1) >= 0).all()  # a larger score never gets a smaller probability
        assert torch.equal(softmax_fixed(q + 12345, 12), p)  # shift invariant, as the float softmax


def test_integer_softmax_error_against_torch_is_below_the_documented_bound():
    assert float_softmax_error() < SOFTMAX_ERROR_BOUND
    half_step_off = [round(v * 2 ** (-1 / 128)) if r % 2 else v for r, v in enumerate(EXP_TABLE)]  # odd r: 0.27% low
    assert float_softmax_error(half_step_off) > SOFTMAX_ERROR_BOUND
    neighbour = list(EXP_TABLE[1:]) + [EXP_TABLE[-1] // 2 + 1]  # each entry read one index late
    assert float_softmax_error(neighbour) > SOFTMAX_ERROR_BOUND


def test_integer_softmax_refuses_too_few_score_bits():
    with pytest.raises(FixedPointError, match="score_frac = -10"):
        softmax_fixed(torch.zeros(1, 3, dtype=torch.long), -10)


def _ce_phases(spec: NetworkSpec, beta: float, seed: int, integer_softmax: bool = True):
    """A free and a nudged phase of 200 samples on the reference target's quantized network and on the fixed-point
    model: (target's nudged phase, model's nudged phase, model's free phase, model)."""
    t, fp = pair(spec)
    t.quant.integer_softmax = integer_softmax  # False: the Brevitas network with torch's softmax
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(200, 1, 6, 6, generator=g), torch.randint(0, 4, (200,), generator=g)
    return (*phases(t, fp, x, y, beta, 20, 10), fp)


@pytest.mark.parametrize("beta, hidden", [(0.5, (16,)), (-0.25, (20, 12)), (1.0, (20, 12))])
def test_ce_nudged_phase_tracks_the_float_softmax_network(beta, hidden):
    """The integer softmax is not torch's: a nudged state may differ by an LSB (2 once fed back), and rarely does."""
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=hidden, classes=4, output="ce")
    nudged, fnudged, ffree, fp = _ce_phases(spec, beta, 5, integer_softmax=False)
    assert lsb_gap(nudged.states, fnudged.states, fp.state_frac) <= 2
    same = torch.cat([(s.flatten(1) * 2.0 ** fp.state_frac == f.double()).flatten()
                      for s, f in zip(nudged.states, fnudged.states)])
    assert same.double().mean() >= 0.97
    assert lsb_gap(nudged.states, ffree.states, fp.state_frac) > 1  # the nudge moved something


@pytest.mark.parametrize("beta, update", [(0.5, "synchronous"), (-0.25, "alternating"), (1.0, "synchronous")])
def test_ce_nudged_phase_of_the_reference_target_is_bit_exact(beta, update):
    """A fixed-point CE network on the reference target nudges through the integer softmax: bit for bit."""
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(20, 12), classes=4, output="ce", update=update)
    nudged, fnudged, ffree, fp = _ce_phases(spec, beta, 7)
    assert lsb_gap(nudged.states, fnudged.states, fp.state_frac) == 0
    assert lsb_gap(nudged.states, ffree.states, fp.state_frac) > 0


def test_the_reference_targets_nudge_model_follows_every_weight_change():
    """The fixed-point model behind the reference target's CE nudge is kept while the weights and quantizers stay
    the same, and a weight changed in place (``.data``: no autograd version bump) gives a model rebuilt afresh."""
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4, output="ce")
    t, _ = pair(spec)
    net = t.quant
    g = torch.Generator().manual_seed(3)
    s_int = torch.randint(0, 1 << 5, (100, 12), generator=g)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 4, (100,), generator=g), 4) << 5

    def force(model):
        return model.nudge(s_int, onehot, 1 << 15, model.plans[-1].acc_frac)

    first = net._fixed_point()
    assert net._fixed_point() is first
    net.weights["w_out"].weight.data[:, :3] += 0.5
    second = net._fixed_point()
    assert second is not first and net._fixed_point() is second
    assert torch.equal(force(second), force(FixedPointNetwork.from_quant(net)))
    assert not torch.equal(force(second), force(first))


def test_ce_nudge_stays_within_the_accumulator_width():
    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(16, 8), classes=4, output="ce"), weight_bits=8)
    plan = fp.plans[-1]
    g = torch.Generator().manual_seed(0)
    s_last = torch.randint(0, 1 << fp.state_bits, (2000, 8), generator=g)
    s_last[:10] = torch.tensor([0, (1 << fp.state_bits) - 1]).repeat(4)  # extreme states
    onehot = torch.nn.functional.one_hot(torch.randint(0, 4, (2000,), generator=g), 4) << fp.state_frac
    worst = max(int(fp.nudge(s_last, onehot, round(b * 2 ** 16), plan.acc_frac).abs().max()) for b in (4.0, -4.0))
    assert 0 < worst <= fp.ce_nudge_bound
    assert plan.bound + fp.ce_nudge_bound < 2 ** (fp.accumulator_bits - 1)


# -- the weight file -------------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_weight_file_round_trip_relaxes_identically(tmp_path, granularity):
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 8), classes=4, tied=False)
    _, fp = pair(spec, granularity=granularity)
    path = tmp_path / "net.epqw"
    fp.save(path, {"steps": 20})
    back = FixedPointNetwork.load(path)
    assert back.spec == spec and back.formats() == fp.formats()
    for name, t in fp.params.items():
        assert torch.equal(back.params[name].data, t.data) and torch.equal(back.params[name].frac, t.frac)
    xi = fp.encode_input(torch.rand(50, 1, 6, 6))
    assert all(torch.equal(a, b) for a, b in zip(fp.relax(xi, 20).states, back.relax(xi, 20).states))
    blob = path.read_bytes()
    assert blob[:4] == b"EPQW" and struct.unpack("<BBH", blob[4:8])[0] == 1


def test_weight_file_layout_matches_the_docs(tmp_path):
    """The first record after the header is ``meta``; then w1 as i8 with its frac bits and shape."""
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4)
    _, fp = pair(spec)
    path = tmp_path / "net.epqw"
    fp.save(path)
    blob = path.read_bytes()
    pos = 8
    name_len = blob[pos]
    assert blob[pos + 1:pos + 1 + name_len] == b"meta"
    pos += 1 + name_len
    code, frac, ndim = struct.unpack("<BbB", blob[pos:pos + 3])
    (length,) = struct.unpack("<H", blob[pos + 3:pos + 5])
    assert (code, frac, ndim) == (3, 0, 1)
    pos += 5 + length
    name_len = blob[pos]
    assert blob[pos + 1:pos + 1 + name_len] == b"w1"
    pos += 1 + name_len
    code, frac, ndim = struct.unpack("<BbB", blob[pos:pos + 3])
    shape = struct.unpack("<2H", blob[pos + 3:pos + 7])
    assert (code, frac, ndim, shape) == (0, int(fp.params["w1"].frac), 2, (12, 36))
    data = torch.frombuffer(bytearray(blob[pos + 7:pos + 7 + 12 * 36]), dtype=torch.int8).view(12, 36)
    assert torch.equal(data.long(), fp.params["w1"].data)


def _shift_half_even(a: int, k: int) -> int:
    """``round_half_even(a / 2^k)`` of a Python int, written afresh from docs/quantize.md."""
    if k <= 0:
        return a << -k
    q, r = a >> k, a & ((1 << k) - 1)
    return q + (r > 1 << (k - 1) or (r == 1 << (k - 1) and q & 1))


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_a_ce_weight_file_holds_what_reproduces_the_nudge_bit_for_bit(tmp_path, granularity):
    """The CE nudge computed from the file alone (its integers, formats and ``ce_nudge`` constants, following
    docs/quantize.md step by step in Python ints) equals the fixed-point model's at every state tried."""
    from quantize import weight_file

    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 8), classes=5, output="ce"),
                 granularity=granularity, weight_bits=6)
    path = tmp_path / "ce.epqw"
    fp.save(path)
    tensors, meta = weight_file.read(path)
    c, fs, score_frac = meta["ce_nudge"], meta["state"]["frac"], meta["score_frac"]
    (w, fw), (b, fb) = tensors["w_out"], tensors["b_out"]
    rows = w.shape[0]
    fw, fb = fw.expand(rows) if fw.dim() == 0 else fw, fb.expand(rows) if fb.dim() == 0 else fb
    w_al = [[int(v) << (score_frac - fs - int(fw[i])) for v in w[i]] for i in range(rows)]
    b_al = [int(b[i]) << (score_frac - int(fb[i])) for i in range(rows)]
    mask = (1 << c["exp_frac_bits"]) - 1
    g = torch.Generator().manual_seed(1)
    s_last = torch.randint(0, 1 << fp.state_bits, (300, w.shape[1]), generator=g)
    labels = torch.randint(0, rows, (300,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, rows) << fs
    for beta in (0.5, -1.0, 4.0):
        beta_q = round(beta * (1 << c["beta_frac"]))
        model = fp.nudge(s_last, onehot, beta_q, fp.plans[-1].acc_frac)
        for n in range(0, 300, 7):
            s = [int(v) for v in s_last[n]]
            o = [sum(wi * si for wi, si in zip(w_al[i], s)) + b_al[i] for i in range(rows)]
            e = [-_shift_half_even((oi - max(o)) * c["log2e_q"], c["softmax_shift"]) for oi in o]
            u = [_shift_half_even(c["exp_table"][ei & mask], min(ei >> c["exp_frac_bits"], c["exp_table_frac"] + 1))
                 for ei in e]
            p = [((ui << (c["prob_frac"] + 1)) + sum(u)) // (2 * sum(u)) for ui in u]
            grad = [(int(labels[n] == i) << c["prob_frac"]) - p[i] for i in range(rows)]
            nudge = [_shift_half_even(beta_q * sum(grad[i] * w_al[i][j] for i in range(rows)), c["nudge_shift"])
                     for j in range(len(s))]
            assert nudge == model[n].tolist(), (beta, n)


def test_corrupt_or_truncated_weight_files_are_rejected(tmp_path):
    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4))
    good = tmp_path / "good.epqw"
    fp.save(good)
    blob = good.read_bytes()
    cases = {
        "flip.epqw": blob[:40] + bytes([blob[40] ^ 0x10]) + blob[41:],
        "short.epqw": blob[:-9],
        "magic.epqw": b"XXXX" + blob[4:],
    }
    messages = {"flip.epqw": "CRC mismatch", "short.epqw": "CRC mismatch", "magic.epqw": "bad magic"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightFileError, match=messages[name]):
            FixedPointNetwork.load(tmp_path / name)
    with pytest.raises(WeightFileError, match="cannot read"):
        FixedPointNetwork.load(tmp_path / "missing.epqw")


def test_weight_file_of_another_version_is_refused(tmp_path):
    import zlib

    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4))
    path = tmp_path / "v.epqw"
    fp.save(path)
    body = bytearray(path.read_bytes()[:-4])
    body[4] = 2
    path.write_bytes(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))
    with pytest.raises(WeightFileError, match="version 2"):
        FixedPointNetwork.load(path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["input"].update(bits=0), r"input\.bits = 0, expected an integer in \[2, 16\]"),
    (lambda m: m["input"].update(bits=10**30), r"input\.bits = 1000000000000000000000000000000"),
    (lambda m: m["input"].update(signed="yes"), r"input\.signed = 'yes', expected true or false"),
    (lambda m: m["state"].update(frac=-3), r"state\.frac = -3"),
    (lambda m: m.pop("state"), r"no field 'state'"),
    (lambda m: m.update(spec=None), r"invalid meta record"),
    (lambda m: m["spec"].update(hidden=[13]), r"w1 has shape \(12, 36\), the network needs \(13, 36\)"),
    (lambda m: m["parameters"]["w1"].update(bits=2), r"w1 holds values outside its 2-bit format"),
    (lambda m: m.update(parameters=[]), r"do not match the parameters"),
    (lambda m: m.pop("ce_nudge"), r"a CE network's file needs a ce_nudge record"),
    (lambda m: m["ce_nudge"]["exp_table"].__setitem__(5, 30000), r"ce_nudge\.exp_table = \[32768, "),
    (lambda m: m["ce_nudge"].update(log2e_q=47275), r"ce_nudge\.log2e_q = 47275, .* with 47274"),
    (lambda m: m["ce_nudge"].update(nudge_shift=3), r"ce_nudge\.nudge_shift = 3"),
    (lambda m: m["ce_nudge"].update(exp_bias=1), r"ce_nudge\.exp_bias = 1"),
])
def test_a_weight_file_with_a_valid_crc_but_odd_metadata_is_refused_by_name(tmp_path, change, message):
    """A crafted .epqw (CRC recomputed) with odd metadata: a WeightFileError naming the field, never a crash."""
    from quantize import weight_file

    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4))
    path = tmp_path / "net.epqw"
    fp.save(path)
    tensors, meta = weight_file.read(path)
    change(meta)
    signed = {n: fp.params[n].signed for n in tensors}
    weight_file.write(path, {n: (d, f, signed[n]) for n, (d, f) in tensors.items()}, meta)  # a valid CRC again
    with pytest.raises(WeightFileError, match=message):
        FixedPointNetwork.load(path)


def test_a_format_1_ce_file_without_ce_nudge_still_loads(tmp_path):
    """Format 1 fixed the softmax's constants by its spec (the same as format 2 records): its files load."""
    from quantize import weight_file

    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4, output="ce"))
    path = tmp_path / "v1.epqw"
    fp.save(path)
    tensors, meta = weight_file.read(path)
    meta["format"] = "hwtoolkit-fixed-point/1"
    del meta["ce_nudge"]
    weight_file.write(path, {n: (d, f, fp.params[n].signed) for n, (d, f) in tensors.items()}, meta)
    back = FixedPointNetwork.load(path)
    assert back.ce_nudge_constants() == fp.ce_nudge_constants()


def test_a_weight_file_whose_meta_is_not_json_is_refused(tmp_path):
    from quantize import weight_file

    _, fp = pair(NetworkSpec(input_shape=(1, 6, 6), hidden=(12,), classes=4))
    path = tmp_path / "net.epqw"
    fp.save(path)
    tensors, _ = weight_file.read(path)
    records = {n: (d, f, fp.params[n].signed) for n, (d, f) in tensors.items()}
    weight_file.write(path, records, ["not", "an", "object"])
    with pytest.raises(WeightFileError, match="meta record is list, expected a JSON object"):
        FixedPointNetwork.load(path)
