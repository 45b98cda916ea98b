"""The fixed-point model: EP relaxation in integers only, the golden model a board's firmware matches bit for bit.

Every number is an integer ``q`` standing for ``q * 2^-f`` (``f`` its fractional bits):

* input ``x``: ``input_bits``, unsigned (signed if the spec normalises), ``f_x`` from the input quantizer;
* states ``s_l``: ``state_bits`` unsigned, ``f_s`` (``2^-f_s`` = the state scale; 8 bits -> Q0.8);
* weights ``W_l``: ``weight_bits`` signed, narrow range, ``f_w`` per tensor or per output row;
* biases ``b_l``: ``bias_bits`` signed, in the scale of the products they join (``f_w + f_in``).

A step of layer ``l`` sums, in a signed accumulator with ``F_l`` fractional bits (the largest of its terms'),
every term shifted left to ``F_l`` (exact, no rounding):

    acc = sum_j W_l[c,j] s_{l-1}[j] << (F_l - f_w[c] - f_in) + b_l[c] << (F_l - f_w[c] - f_in)
        + sum_k W_{l+1}[k,c] s_{l+1}[k] << (F_l - f_w'[k] - f_s)  [+ nudge, last layer]

and the new state is ``clamp(round_half_even(acc / 2^(F_l - f_s + a)), 0, 2^state_bits - 1)`` with ``a = 0``
for ``hard_sigmoid`` (``clip(u, 0, 1)``) and ``a = 1`` for ``hard_sigmoid_half`` (``clip(u/2, 0, 1)``).
Round half to even is torch's and Brevitas's rounding. The nudge of an MSE output is
``beta_q * (onehot - s_L)`` with ``beta_q = round(beta * 2^beta_frac)``; a CE output's nudge goes through the
integer softmax ``softmax_fixed`` (``FixedPointNetwork.nudge``). Conv layers (``quantize.integer_conv``) pool
the integer conv output (the first maximum of a window, or the window's sum for an average pool, whose
``1 / pool_size^2`` is ``pool_shift`` more fractional bits) and add the bias after pooling; their feedback is the
transposed conv of the unpooled states above. Class scores are integers with
``F_out`` fractional bits. Here the arithmetic runs in int64; ``accumulator_bits`` says how wide a board's
accumulator must be.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from hwtoolkit.network.spec import ConvLayer, LayerGeometry, NetworkSpec

from . import integer_conv, weight_file
from .network import QuantEPNetwork

FILE_FORMAT = "hwtoolkit-fixed-point/2"  # 2: a CE network's file records its nudge's constants ("ce_nudge")
FORMATS_READ = ("hwtoolkit-fixed-point/1", FILE_FORMAT)  # format 1 fixed the same constants by its spec

ACTIVATION_SHIFT = {"hard_sigmoid": 0, "hard_sigmoid_half": 1}
BETA_FRAC = 16

# The integer softmax of the CE nudge (docs/quantize.md#the-integer-softmax).
LOG2E_FRAC = 15
LOG2E_Q = 47274  # round(log2(e) * 2^15)
EXP_FRAC_BITS = 6  # the base-2 exponent keeps 6 fractional bits: a 64-entry table
EXP_TABLE_FRAC = 15
EXP_TABLE = (  # round(2^15 * 2^(-r/64)), r = 0 ... 63
    32768, 32415, 32066, 31720, 31379, 31041, 30706, 30376, 30048, 29725, 29405, 29088, 28774, 28464, 28158, 27855,
    27554, 27258, 26964, 26674, 26386, 26102, 25821, 25543, 25268, 24995, 24726, 24460, 24196, 23936, 23678, 23423,
    23170, 22921, 22674, 22430, 22188, 21949, 21713, 21479, 21247, 21019, 20792, 20568, 20347, 20127, 19911, 19696,
    19484, 19274, 19066, 18861, 18658, 18457, 18258, 18061, 17867, 17674, 17484, 17296, 17109, 16925, 16743, 16562)
PROB_FRAC = 16  # softmax outputs: unsigned, 2^-16 per unit


class FixedPointError(ValueError):
    """The network or quantization cannot be run by the fixed-point model."""


@dataclass(frozen=True)
class FixedTensor:
    """Integers with their fractional bits: one for the tensor, or one per output row (dim 0)."""

    data: torch.Tensor  # int64
    frac: torch.Tensor  # int64, shape () or (rows,)
    bits: int
    signed: bool


def round_shift(a: torch.Tensor, k: int) -> torch.Tensor:
    """``round_half_even(a / 2^k)`` in integers (a left shift for ``k < 0``)."""
    if k <= 0:
        return a << -k
    q = a >> k  # floor division by 2^k (arithmetic shift)
    r = a - (q << k)
    half = 1 << (k - 1)
    return q + ((r > half) | ((r == half) & (q & 1).bool())).long()


def softmax_fixed(scores: torch.Tensor, score_frac: int, table: Sequence[int] = EXP_TABLE) -> torch.Tensor:
    """Integer softmax over dim 1 of integer ``scores`` (``score_frac`` bits): probabilities with ``PROB_FRAC`` bits.

    ``2^((o_i - max o) log2 e)``: the exponent in units of 2^-6 (round half even), its integer part a right shift
    and its fractional part a 64-entry table; normalised by an integer division rounding half up. Each output is
    within half a unit of the exact quotient, so the outputs sum to ``2^16`` within ``classes / 2`` units.
    """
    if score_frac + LOG2E_FRAC < EXP_FRAC_BITS:
        raise FixedPointError(f"score_frac = {score_frac} is invalid: the softmax needs at least "
                              f"{EXP_FRAC_BITS - LOG2E_FRAC}")
    lut = torch.tensor(table, dtype=torch.long)
    d = scores.long() - scores.long().max(1, keepdim=True).values  # <= 0
    e = -round_shift(d * LOG2E_Q, score_frac + LOG2E_FRAC - EXP_FRAC_BITS)  # -exponent, >= 0, 6 frac bits
    whole = (e >> EXP_FRAC_BITS).clamp(max=EXP_TABLE_FRAC + 1)  # beyond 16 the term rounds to 0 anyway
    u = round_shift_each(lut[e & ((1 << EXP_FRAC_BITS) - 1)], whole)
    total = u.sum(1, keepdim=True)  # >= 2^15: the largest score contributes table[0]
    return ((u << (PROB_FRAC + 1)) + total) // (2 * total)


def round_shift_each(a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``round_half_even(a / 2^k)`` with a shift ``k >= 1`` or 0 per element (``round_shift`` elementwise)."""
    q = a >> k
    r = a - (q << k)
    half = (1 << k) >> 1
    return q + ((k > 0) & ((r > half) | ((r == half) & (q & 1).bool()))).long()


def _frac_of(scale: torch.Tensor, what: str) -> torch.Tensor:
    """Fractional bits ``f`` of power-of-two scales ``2^-f``; an error if a scale is not a power of two."""
    f = -torch.log2(scale.detach().double().flatten())
    if not torch.allclose(f, f.round(), atol=1e-9):
        raise FixedPointError(f"{what} has scales {scale.flatten()[:4].tolist()}, not powers of two; set "
                              f"quant.scale = \"pow2\" for the fixed-point model")
    f = f.round().long()
    return f[0] if f.numel() == 1 else f


def _fixed(qt: object, what: str) -> FixedTensor:
    """A Brevitas quant tensor as a ``FixedTensor``."""
    frac = _frac_of(qt.scale, what)
    return FixedTensor(qt.int().long().detach().cpu(), frac.cpu(), int(qt.bit_width), bool(qt.signed))


def _rows(frac: torch.Tensor, rows: int) -> torch.Tensor:
    return frac.expand(rows).clone() if frac.dim() == 0 else frac


def pool_shift(geo: LayerGeometry) -> int:
    """Fractional bits an average pool adds: its window sum stands for the mean at ``2 log2(pool_size)`` more bits.

    A max pool, no pool and a dense layer add none. The division must be a shift, so an average pool's
    ``pool_size`` must be a power of two.
    """
    if geo.kind != "conv" or geo.conv.pool != "avg":
        return 0
    k = geo.conv.pool_size
    if k & (k - 1):
        raise FixedPointError(f"network.conv[{geo.index - 1}].pool_size = {k} with pool = \"avg\" has no "
                              f"fixed-point form: the mean's division by pool_size^2 must be a shift, so pool_size "
                              f"must be a power of two")
    return 2 * (k.bit_length() - 1)


def _per_row(shift: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A shift per output row (dim 0) shaped to broadcast against ``like``."""
    return shift.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class LayerPlan:
    """One state layer's integer step: aligned weights and bias in the accumulator's fractional bits."""

    geo: LayerGeometry
    acc_frac: int
    forward: torch.Tensor  # W_l << shift per output row (unit or channel): (units, fan_in) or (ch, in_ch, k, k)
    bias: torch.Tensor  # (units,) or (channels,), added after pooling
    feedback: torch.Tensor | None  # the layer above's W_{l+1} (or B_{l+1}) << shift per its rows; None for the last
    state_shift: int  # acc -> state: round_shift by this many bits
    bound: int  # the largest |acc| any input can give (sizes the accumulator)


@dataclass
class FixedRelaxation:
    """States (integers in the state format) and class scores (integers, ``score_frac`` bits) of a phase."""

    states: tuple[torch.Tensor, ...]
    scores: torch.Tensor
    steps: int


@dataclass
class FixedPointNetwork:
    """The integer network: formats, integer parameters and the per-layer plans that relax it."""

    spec: NetworkSpec
    input_format: FixedTensor  # data unused: carries bits, frac and signedness of the input
    state_bits: int
    state_frac: int
    params: dict[str, FixedTensor]
    plans: list[LayerPlan] = field(default_factory=list)
    score_frac: int = 0
    readout: tuple[torch.Tensor, torch.Tensor] | None = None  # aligned (W_out, b_out) for a CE readout
    ce_nudge_bound: int = 0  # the largest |CE nudge| in the last accumulator (beside plans[-1].bound)

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_quant(cls, net: QuantEPNetwork) -> "FixedPointNetwork":
        """The integers of a Brevitas power-of-two network (weights, biases, input and state formats)."""
        spec, cfg = net.spec, net.cfg
        if not cfg.fixed_point:
            raise FixedPointError(f"the fixed-point model needs quantized weights and states with power-of-two "
                                  f"scales; this network is {cfg.describe()}")
        for g in spec.layers:
            pool_shift(g)
        if spec.activation not in ACTIVATION_SHIFT:
            raise FixedPointError(f"network.activation = {spec.activation!r} has no fixed-point form; valid: "
                                  f"{sorted(ACTIVATION_SHIFT)}")
        if spec.dynamics != "prototypical":
            raise FixedPointError("the fixed-point model runs prototypical dynamics (network.dynamics = "
                                  "\"prototypical\")")
        with torch.no_grad():
            like = next(net.parameters())
            probe = net._input_probe(1, like)
            state = net.state_quant[0](like.new_zeros(1))
            params = {name: _fixed(qt, f"parameter {name}") for name, qt in net.quant_tensors().items()}
        fmt = FixedTensor(torch.zeros(0, dtype=torch.long), _frac_of(probe.scale, "the input quantizer").cpu(),
                          int(probe.bit_width), bool(probe.signed))
        model = cls(spec, fmt, int(state.bit_width), int(_frac_of(state.scale, "the state quantizer")), params)
        model._plan()
        return model

    def _feedback_name(self, index: int) -> str:
        return f"w{index}" if self.spec.tied else f"fb{index}"

    def _plan(self) -> None:
        spec, p, fs = self.spec, self.params, self.state_frac
        fx = int(self.input_format.frac)
        smax = (1 << self.state_bits) - 1
        xmax = (1 << (self.input_format.bits - (1 if self.input_format.signed else 0))) - 1
        n = spec.num_state_layers
        self.plans = []
        for i, g in enumerate(spec.layers):
            w, b = p[f"w{g.index}"], p[f"b{g.index}"]
            f_in = fx if i == 0 else fs
            fw = _rows(w.frac, w.data.shape[0])
            a = pool_shift(g)
            terms = [int((fw + f_in).max()) + a]
            above = p[self._feedback_name(g.index + 1)] if i + 1 < n else None
            if above is not None:
                fa = _rows(above.frac, above.data.shape[0])
                a_up = pool_shift(spec.layers[i + 1])
                terms.append(int((fa + fs).max()) + a_up)
            if i == n - 1 and spec.output == "mse":
                terms.append(BETA_FRAC + fs)
            acc = max(terms)
            shift = acc - fw - f_in - a
            forward = w.data << _per_row(shift, w.data)
            bias = b.data << (shift + a)
            window = g.conv.pool_size ** 2 if a else 1  # an average pool sums this many conv outputs
            bound = int(forward.abs().flatten(1).sum(1).max()) * (xmax if i == 0 else smax) * window \
                + int(bias.abs().max())
            feedback = None
            if above is not None:
                feedback = above.data << _per_row(acc - fa - fs - a_up, above.data)
                # a unit of layer l meets each weight of the layer above at most once per sample
                dims = (0,) if feedback.dim() == 2 else (0, 2, 3)
                bound += int(feedback.abs().sum(dims).max()) * smax
            if i == n - 1 and spec.output == "mse":
                bound += (1 << BETA_FRAC) * 4 * (1 << fs)  # |beta| up to 4
            self.plans.append(LayerPlan(g, acc, forward, bias, feedback,
                                        acc - fs + ACTIVATION_SHIFT[spec.activation], bound))
        if spec.output == "ce":
            w, b = p["w_out"], p["b_out"]
            fw = _rows(w.frac, w.data.shape[0])
            self.score_frac = int((fw + fs).max())
            shift = self.score_frac - fw - fs
            self.readout = (w.data << shift.view(-1, 1), b.data << shift)
            self.ce_nudge_bound = _ce_nudge_bound(w, self.plans[-1].acc_frac)
        else:
            self.score_frac = fs

    # -- formats ---------------------------------------------------------------------------------------

    @property
    def accumulator_bits(self) -> int:
        """Signed accumulator width that no input, state or |beta| <= 4 can overflow (readout and CE nudge included).

        ``plans[-1].bound`` holds the MSE nudge but not the CE one, which only a board running the integer softmax
        adds (``ce_nudge_bound``).
        """
        bound = max(max(plan.bound for plan in self.plans), self.plans[-1].bound + self.ce_nudge_bound)
        if self.readout is not None:
            w, b = self.readout
            bound = max(bound, int(w.abs().sum(1).max()) * ((1 << self.state_bits) - 1) + int(b.abs().max()))
        return bound.bit_length() + 1

    def formats(self) -> dict:
        """Every format, as the docs and the weight file state them."""
        out = {"input": {"bits": self.input_format.bits, "frac": int(self.input_format.frac),
                         "signed": self.input_format.signed},
               "state": {"bits": self.state_bits, "frac": self.state_frac, "signed": False},
               "accumulator_bits": self.accumulator_bits, "score_frac": self.score_frac, "beta_frac": BETA_FRAC,
               "layers": [{"acc_frac": p.acc_frac, "state_shift": p.state_shift} for p in self.plans],
               "parameters": {}}
        for name, t in self.params.items():
            frac = t.frac.tolist()
            out["parameters"][name] = {"bits": t.bits, "signed": t.signed, "frac": frac,
                                       "shape": list(t.data.shape)}
        return out

    # -- the weight file --------------------------------------------------------------------------------

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the integer weights and formats as an ``.epqw`` file (``quantize.weight_file``)."""
        meta = {"format": FILE_FORMAT, "spec": spec_to_dict(self.spec), **self.formats(), **(extra or {})}
        if self.readout is not None:
            meta["ce_nudge"] = self.ce_nudge_constants()
        weight_file.write(path, {n: (t.data, t.frac, t.signed) for n, t in self.params.items()}, meta)

    @classmethod
    def load(cls, path: str | Path) -> "FixedPointNetwork":
        """Read an ``.epqw`` file back into a runnable fixed-point network."""
        tensors, meta = weight_file.read(path)
        where = str(path)
        if meta.get("format") not in FORMATS_READ:
            raise weight_file.WeightFileError(f"{where}: meta format {meta.get('format')!r}, expected one of "
                                              f"{', '.join(FORMATS_READ)}")
        try:
            spec = spec_from_dict(meta["spec"])
            declared = meta["parameters"]
            if not isinstance(declared, dict) or set(tensors) != set(declared):
                raise ValueError(f"records {sorted(tensors)} do not match the parameters the meta record lists")
            shapes = spec.parameter_shapes()
            if set(declared) != set(shapes):
                raise ValueError(f"parameters {sorted(declared)} do not match the network's {sorted(shapes)}")
            params = {}
            for n, (d, f) in tensors.items():
                bits = _meta_int(declared[n], "bits", 2, 32, f"parameters.{n}")
                signed = _meta_bool(declared[n], "signed", f"parameters.{n}")
                if tuple(d.shape) != tuple(shapes[n]):
                    raise ValueError(f"{n} has shape {tuple(d.shape)}, the network needs {tuple(shapes[n])}")
                lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
                if d.numel() and not lo <= int(d.min()) <= int(d.max()) <= hi:
                    raise ValueError(f"{n} holds values outside its {bits}-bit format")
                params[n] = FixedTensor(d, f, bits, signed)
            fmt = meta["input"]
            input_bits = _meta_int(fmt, "bits", 2, 16, "input")
            input_frac = _meta_int(fmt, "frac", -64, 64, "input")
            state_bits = _meta_int(meta["state"], "bits", 1, 16, "state")
            state_frac = _meta_int(meta["state"], "frac", 0, 64, "state")
            model = cls(spec, FixedTensor(torch.zeros(0, dtype=torch.long), torch.tensor(input_frac), input_bits,
                                          _meta_bool(fmt, "signed", "input")), state_bits, state_frac, params)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            problem = f"no field {e}" if isinstance(e, KeyError) else str(e)
            raise weight_file.WeightFileError(f"{where}: invalid meta record: {problem}") from None
        model._plan()
        model._check_ce_nudge(meta, where)
        return model

    def ce_nudge_constants(self) -> dict:
        """What a board needs to reproduce the CE nudge bit for bit (docs/quantize.md, the CE nudge): CONFIGURE's
        two shifts, ``BETA_FRAC`` and the integer softmax's constants and table."""
        if self.readout is None:
            raise FixedPointError("an MSE network has no CE nudge")
        return {"nudge_shift": ce_nudge_shift(self.score_frac - self.state_frac, self.plans[-1].acc_frac),
                "softmax_shift": self.score_frac + LOG2E_FRAC - EXP_FRAC_BITS, "beta_frac": BETA_FRAC,
                "log2e_q": LOG2E_Q, "log2e_frac": LOG2E_FRAC, "exp_frac_bits": EXP_FRAC_BITS,
                "exp_table_frac": EXP_TABLE_FRAC, "exp_table": list(EXP_TABLE), "prob_frac": PROB_FRAC}

    def _check_ce_nudge(self, meta: dict, where: str) -> None:
        """A file's ``ce_nudge`` must be what this model computes: a board following the file and this model
        would otherwise nudge differently. Format 1 files have none (their spec fixed the same constants)."""
        recorded = meta.get("ce_nudge")
        if self.readout is None or (recorded is None and meta["format"] != FILE_FORMAT):
            if recorded is not None:
                raise weight_file.WeightFileError(f"{where}: an MSE network's file has a ce_nudge record")
            return
        if not isinstance(recorded, dict):
            raise weight_file.WeightFileError(f"{where}: a CE network's file needs a ce_nudge record (the constants "
                                              f"a board reproduces the CE nudge with); it has {recorded!r}")
        expected = self.ce_nudge_constants()
        for key in sorted(set(expected) | set(recorded)):
            if key not in expected or recorded.get(key) != expected[key]:
                raise weight_file.WeightFileError(
                    f"{where}: ce_nudge.{key} = {recorded.get(key)!r}, this model computes the nudge with "
                    f"{expected.get(key)!r}")

    # -- running ---------------------------------------------------------------------------------------

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (NCHW, float) as the input integers, rounded as the Brevitas input quantizer rounds.

        Normalisation runs in ``x``'s dtype: give it the dtype the Brevitas network runs in to match it exactly.
        """
        from hwtoolkit.network.dynamics import normalize_input

        fmt = self.input_format
        lo = -(1 << (fmt.bits - 1)) if fmt.signed else 0
        hi = (1 << (fmt.bits - (1 if fmt.signed else 0))) - 1
        scale = 2.0 ** -int(fmt.frac)
        return torch.round(normalize_input(self.spec, x) / scale).clamp(lo, hi).long().flatten(1)

    def relax(self, x_int: torch.Tensor, steps: int, beta: float = 0.0, y: torch.Tensor | None = None,
              init: Sequence[torch.Tensor] | None = None) -> FixedRelaxation:
        """Run one phase of ``steps`` integer steps from ``init`` (zeros if ``None``)."""
        spec = self.spec
        if steps < 1:
            raise ValueError(f"steps = {steps} is invalid: a phase needs at least one step")
        if beta != 0.0:
            if y is None:
                raise ValueError("a nudged phase (beta != 0) needs targets y")
        batch = x_int.shape[0]
        states = [torch.zeros(batch, *shape, dtype=torch.long).flatten(1) for shape in spec.state_shapes] \
            if init is None else [s.long().flatten(1).clone() for s in init]
        drive = self.forward_term(0, x_int.long())
        beta_q = round(beta * (1 << BETA_FRAC))
        onehot = (torch.nn.functional.one_hot(y, spec.classes).long() << self.state_frac) if beta else None
        smax = (1 << self.state_bits) - 1
        for _ in range(steps):
            if spec.update == "alternating":
                for parity in (0, 1):
                    for i in range(parity, len(states), 2):
                        states[i] = self._settle(i, drive, states, beta_q, onehot, smax)
            else:
                states = [self._settle(i, drive, states, beta_q, onehot, smax) for i in range(len(states))]
        return FixedRelaxation(tuple(states), self.scores(states[-1]), steps)

    def _settle(self, i: int, drive: torch.Tensor, states: list[torch.Tensor], beta_q: int,
                onehot: torch.Tensor | None, smax: int) -> torch.Tensor:
        plan = self.plans[i]
        acc = drive if i == 0 else self.forward_term(i, states[i - 1])
        if plan.feedback is not None:
            acc = acc + self.feedback_term(i, states[i], states[i + 1])
        if onehot is not None and i == len(self.plans) - 1:
            acc = acc + self.nudge(states[i], onehot, beta_q, plan.acc_frac)
        return round_shift(acc, plan.state_shift).clamp(0, smax)

    def forward_term(self, i: int, below: torch.Tensor) -> torch.Tensor:
        """``P(W_l * s_{l-1}) + b_l`` of the layer at 0-based ``i`` in its accumulator (flat ``(batch, units)``).

        A max pool keeps the largest conv output of each window, an average pool their sum (the mean at
        ``pool_shift`` more fractional bits); the bias joins after pooling, once per channel.
        """
        plan = self.plans[i]
        g = plan.geo
        if g.kind == "dense":
            return below @ plan.forward.t() + plan.bias
        c = g.conv
        z = integer_conv.conv2d(below.view(-1, *g.in_shape), plan.forward, c.stride, c.padding)
        if c.pool == "max":
            z = integer_conv.max_pool(z, c.pool_size)[0]
        elif c.pool == "avg":
            z = integer_conv.sum_pool(z, c.pool_size)
        return (z + plan.bias.view(1, -1, 1, 1)).flatten(1)

    def feedback_term(self, i: int, own: torch.Tensor, above: torch.Tensor) -> torch.Tensor:
        """``W_{l+1}^T P^T s_{l+1}`` into the layer at 0-based ``i`` (flat), from its own states ``own``.

        Max pool: each pooled state goes back to the position of its window's maximum in ``W_{l+1} * s_l``,
        computed from ``own`` (the layer's states before its update) with the first maximum taking ties. Average
        pool: each pooled state goes to every position of its window (the ``1 / pool_size^2`` is in the shifts).
        """
        plan, g = self.plans[i], self.plans[i + 1].geo
        if g.kind == "dense":
            return above @ plan.feedback
        c = g.conv
        return integer_conv.conv_transpose2d(self._unpool(i + 1, above, own), plan.feedback, c.stride, c.padding,
                                             g.in_shape[1:]).flatten(1)

    def _unpool(self, i: int, s: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
        """``P^T s``: the pooled states ``s`` of the conv layer at 0-based ``i`` put back on its conv grid.

        Max pool: at each window's first maximum of ``W_l * below``; average pool: on every position of the window.
        """
        plan = self.plans[i]
        g = plan.geo
        c, hw = g.conv, g.conv_shape[1:]
        s = s.view(-1, *g.out_shape)
        if c.pool == "max":
            z = integer_conv.conv2d(below.view(-1, *g.in_shape), plan.forward, c.stride, c.padding)
            return integer_conv.max_unpool(s, integer_conv.max_pool(z, c.pool_size)[1], hw)
        if c.pool == "avg":
            return integer_conv.spread(s, c.pool_size, hw)
        return s

    def weight_terms(self, x_int: torch.Tensor, states: Sequence[torch.Tensor]) -> dict[str, FixedTensor]:
        """dPhi/dW and dPhi/db at ``states``, summed over the batch, in integers (the EP update's local terms).

        Layer ``l``'s weight term ``sum_n (P^T s_l) s_{l-1}^T`` (a correlation for conv layers) has
        ``f_s + f_in + pool_shift`` fractional bits (per tensor, whatever the weights' granularity); the max pool
        sends each state to its window's maximum in ``W_l * s_{l-1}``, as the relaxation does. Bias terms are the
        states summed over the batch (and over positions for conv layers), ``f_s`` bits.
        """
        fs, fx = self.state_frac, int(self.input_format.frac)
        out: dict[str, FixedTensor] = {}
        below = x_int.long()
        for i, (plan, s) in enumerate(zip(self.plans, states)):
            g, a = plan.geo, pool_shift(plan.geo)
            frac = torch.tensor(fs + (fx if i == 0 else fs) + a)
            if g.kind == "dense":
                w = s.t() @ below
                b = s.sum(0)
            else:
                c = g.conv
                w = integer_conv.conv2d_weight(below.view(-1, *g.in_shape), self._unpool(i, s, below), c.kernel,
                                               c.stride, c.padding)
                b = s.view(-1, *g.out_shape).sum((0, 2, 3))
            out[f"w{g.index}"] = FixedTensor(w, frac, 64, True)
            out[f"b{g.index}"] = FixedTensor(b, torch.tensor(fs), 64, True)
            below = s
        return out

    def nudge(self, s_last: torch.Tensor, onehot: torch.Tensor, beta_q: int, acc_frac: int) -> torch.Tensor:
        """The nudge ``-beta dL/ds_L`` in the last layer's accumulator format (``acc_frac`` bits).

        MSE: ``beta_q (onehot - s_L)``, shifted left (exact). CE: ``beta_q ((onehot << 16 - p) @ W_out)`` with
        ``p = softmax_fixed(scores)``, rounded half to even down to ``acc_frac`` (``ce_nudge_shift``).
        """
        if self.readout is None:
            return (beta_q * (onehot - s_last)) << (acc_frac - BETA_FRAC - self.state_frac)
        g = (onehot << (PROB_FRAC - self.state_frac)) - softmax_fixed(self.scores(s_last), self.score_frac)
        return round_shift(beta_q * (g @ self.readout[0]), ce_nudge_shift(self.score_frac - self.state_frac,
                                                                          acc_frac))

    def scores(self, s_last: torch.Tensor) -> torch.Tensor:
        """Class scores of the last state layer: the CE readout in integers, or ``s_L`` itself."""
        if self.readout is None:
            return s_last.clone()
        w, b = self.readout
        return s_last @ w.t() + b


def ce_nudge_shift(readout_frac: int, acc_frac: int) -> int:
    """Right shift from the CE nudge product (``BETA_FRAC + PROB_FRAC + readout_frac`` bits) to ``acc_frac``."""
    return BETA_FRAC + PROB_FRAC + readout_frac - acc_frac


def _ce_nudge_bound(w_out: FixedTensor, acc_frac: int) -> int:
    """The largest |CE nudge| in the accumulator for |beta| <= 4: ``sum_i |g_i| <= 2^17 + classes`` units."""
    fw = _rows(w_out.frac, w_out.data.shape[0])
    aligned = w_out.data << (fw.max() - fw).view(-1, 1)
    classes = w_out.data.shape[0]
    worst = (4 << BETA_FRAC) * ((2 << PROB_FRAC) + classes) * int(aligned.abs().max())
    k = ce_nudge_shift(int(fw.max()), acc_frac)
    return (worst >> k) + 1 if k > 0 else worst << -k


def _meta_int(table: object, key: str, low: int, high: int, where: str) -> int:
    value = table[key] if isinstance(table, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}.{key} = {value!r}, expected an integer in [{low}, {high}]")
    return value


def _meta_bool(table: object, key: str, where: str) -> bool:
    value = table[key] if isinstance(table, dict) else None
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key} = {value!r}, expected true or false")
    return value


def spec_to_dict(spec: NetworkSpec) -> dict:
    """The spec as plain JSON values (the inverse of ``spec_from_dict``)."""
    return dataclasses.asdict(spec)


def spec_from_dict(d: dict) -> NetworkSpec:
    """A ``NetworkSpec`` from ``spec_to_dict``'s output (lists back to tuples)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "conv"}
    return NetworkSpec(conv=tuple(ConvLayer(**c) for c in d.get("conv", ())), **values)
