"""Analog training algorithms: how the EP update reaches the devices (docs/crossbar.md, "Analog training algorithms").

``in_situ`` is the target's own write path (no object here). The others:

* ``MixedPrecision`` (Nandakumar et al., Front. Neurosci. 2020): the update is added to a digital array chi;
  every ``transfer_every`` updates, weights whose |chi| reaches ``threshold`` device steps get ``trunc(chi / step)``
  pulses and chi keeps the remainder.
* ``Transfer`` (Tiki-Taka, Gokmen and Haensch 2020; TTv2, Gokmen 2021; c-TTv2 and AGAD, Rasch et al. 2024): a
  fast array A per parameter receives the (chopped) updates as pulses; every ``transfer_every`` updates the next
  ``transfer_columns`` columns of A are read with one-hot inputs through the read periphery and transferred to
  the weight array C: directly as a pulsed update (Tiki-Taka), or through the digital buffer H (TTv2 family).

The weight arrays C are the target's ``arrays``; A is drawn from the same device configuration and the same seed,
after C. Parameters are viewed as ``(outputs, input lines)``: a dense weight ``(out, in)`` as is, a convolution
kernel with its input lines flattened, a bias as one column (its input line is the constant 1).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .config import TileConfig
from .costs import Counts
from .devices import PairArray, Scratch, WriteStats
from .periphery import ArrayReads


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """A parameter-shaped tensor as (outputs, input lines)."""
    return t.reshape(t.shape[0], -1)


def _columns(shape: tuple[int, ...]) -> int:
    return 1 if len(shape) == 1 else int(torch.Size(shape[1:]).numel())


class Algorithm:
    """The state an algorithm keeps beside the weight arrays, and how it writes an update."""

    name = "in_situ"

    def __init__(self, cfg: TileConfig, arrays: dict[str, PairArray], reads: ArrayReads) -> None:
        self.cfg = cfg
        self.alg = cfg.algorithm
        self.arrays = arrays  # the weight arrays C (the target's)
        self.reads = reads
        self.updates = 0  # updates applied since the last program

    def draw(self, cpu_gen: torch.Generator, device: torch.device, dtype: torch.dtype, scratch: Scratch) -> None:
        """Draw the algorithm's own devices (after the target has drawn C, from the same generator) and make its
        digital state (zero)."""

    def reset(self, gen: torch.Generator, now: float) -> None:
        """Start afresh after the weights were programmed: digital state zero, A at its reference."""
        self.updates = 0

    def apply(self, writes: list[dict[str, torch.Tensor]], delta: Mapping[str, torch.Tensor], gen: torch.Generator,
              now: float, counts: Counts) -> WriteStats:
        """Write one update; the algorithm's digital work goes into ``counts`` (its reads are counted there too)."""
        raise NotImplementedError

    def exposed(self, name: str, c_weight: torch.Tensor, now: float) -> torch.Tensor:
        """The weight the network reads, from C's weight (C alone unless Tiki-Taka's gamma > 0)."""
        return c_weight

    def elapse(self, seconds: float, gen: torch.Generator) -> None:
        """Time acts on the algorithm's own devices."""

    def digital_words(self) -> int:
        """Words of digital memory the algorithm keeps (one word per full-precision number or chopper sign)."""
        return 0

    def report(self) -> dict[str, float]:
        return {"digital_words": float(self.digital_words())}

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])


class MixedPrecision(Algorithm):
    """chi += dW (the increment: two trains add up digitally); every ``transfer_every`` updates, pulse
    n = trunc(chi / step) where |chi| >= threshold x step, and chi -= n x step. On a continuous device
    (dw_min = 0) chi is written whole and zeroed: the algorithm is ``in_situ``."""

    name = "mixed_precision"

    def draw(self, cpu_gen, device, dtype, scratch) -> None:
        self.chi = {n: torch.zeros(a.shape, device=a.device, dtype=a.dtype) for n, a in self.arrays.items()}

    def reset(self, gen: torch.Generator, now: float) -> None:
        super().reset(gen, now)
        for t in self.chi.values():
            t.zero_()

    def apply(self, writes, delta, gen, now, counts) -> WriteStats:
        """Digital work: one add per weight per update; per flush, per weight chi / step, the threshold test and
        chi -= n step (two multiplies, two adds)."""
        for name, d in delta.items():
            self.chi[name].add_(d.to(self.chi[name]))
            counts.adds += d.numel()
        self.updates += 1
        stats = WriteStats()
        if self.updates % self.alg.transfer_every:
            return stats
        for name, chi in self.chi.items():
            c = self.arrays[name]
            counts.muls += 2 * chi.numel()
            counts.adds += 2 * chi.numel()
            if c.cfg.device.dw_min == 0:
                s = c.write(chi, gen, now)
                chi.zero_()
            else:
                q = chi / c.step
                n = torch.trunc(q).mul_(q.abs() >= self.alg.threshold)
                if not bool(n.any()):
                    continue
                s = c.write_counts(n, gen, now)
                chi.sub_(n * c.step)
            _add(stats, s)
        return stats

    def digital_words(self) -> int:
        return sum(a.numel for a in self.arrays.values())

    def state(self) -> dict[str, Any]:
        return {**super().state(), "chi": {n: t.detach().cpu().clone() for n, t in self.chi.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        for n, t in state["chi"].items():
            self.chi[n].copy_(t)


class Transfer(Algorithm):
    """Tiki-Taka and its successors: a fast array A, column reads of A, transfers to C (see the module)."""

    def __init__(self, cfg: TileConfig, arrays: dict[str, PairArray], reads: ArrayReads) -> None:
        super().__init__(cfg, arrays, reads)
        self.name = cfg.algorithm.algorithm
        self.buffered = self.name != "tiki_taka"
        self.chopped = self.name in ("c_ttv2", "agad")
        self.fast: dict[str, PairArray] = {}
        p = cfg.algorithm.in_chop_prob
        self.period = 0 if p == 0 else max(1, round(1 / p))  # agad: reads of a column per chopper period

    def draw(self, cpu_gen, device, dtype, scratch) -> None:
        self.fast = {n: PairArray(self.cfg, c.shape, cpu_gen, device, dtype, c.scale, scratch)
                     for n, c in self.arrays.items()}
        self.offset: dict[str, torch.Tensor | float] = {n: 0.0 for n in self.fast}
        self.pointer = {n: 0 for n in self.fast}
        like = {n: torch.zeros(c.shape, device=c.device, dtype=c.dtype) for n, c in self.arrays.items()}
        self.h = {n: _matrix(t) for n, t in like.items()} if self.buffered else {}
        self.chop = {n: torch.ones(_columns(c.shape), device=c.device, dtype=c.dtype) for n, c in self.arrays.items()}
        if self.name == "agad":
            self.ref = {n: torch.zeros_like(t) for n, t in self.h.items()}  # mean read of the last period
            self.acc = {n: torch.zeros_like(t) for n, t in self.h.items()}  # sum of this period's reads
            self.reads_in_period = {n: torch.zeros(t.shape[1], dtype=torch.long) for n, t in self.h.items()}

    def reset(self, gen: torch.Generator, now: float) -> None:
        """A's devices are programmed to their symmetry points (``fast_reference = 'symmetry_point'``: reads of A
        subtract them, as a reference device at the symmetry point would) or to the pair's zero-weight point."""
        super().reset(gen, now)
        for name, a in self.fast.items():
            pos, neg = a.symmetry_points() if self.alg.fast_reference == "symmetry_point" else (None, None)
            if pos is None or neg is None:
                a.set_devices(torch.tensor(a.reference), torch.tensor(a.reference), gen, now)
                self.offset[name] = 0.0
            else:
                # a device with no step (a zero drawn step gain) has none: it stays at the zero-weight point
                pos, neg = (torch.as_tensor(x).nan_to_num(nan=a.reference).expand(a.shape).to(a.device, a.dtype)
                            for x in (pos, neg))
                a.set_devices(pos, neg, gen, now)
                self.offset[name] = a.scale * (pos - neg)
        self.pointer = {n: 0 for n in self.fast}
        for key in ("h", "acc", "ref", "reads_in_period"):
            for t in getattr(self, key, {}).values():
                t.zero_()
        for t in self.chop.values():
            t.fill_(1)

    def apply(self, writes, delta, gen, now, counts) -> WriteStats:
        """A += c fast_lr w for each write w (the increment, or the two trains one after the other).

        Digital work: a multiply per weight and write (two when chopped); per transferred weight, Tiki-Taka one
        multiply, the TTv2 family H's update, threshold test and decay (two multiplies, two adds), AGAD one add
        more for its reference and one for its running sum."""
        stats = WriteStats()
        for write in writes:
            for name, d in write.items():
                a = self.fast[name]
                d = d.to(a.device, a.dtype) * self.alg.fast_lr
                counts.muls += d.numel() * (2 if self.chopped else 1)
                if self.chopped:
                    d = (_matrix(d) * self.chop[name]).view(a.shape)
                _add(stats, a.write(d, gen, now))
        self.updates += 1
        if self.updates % self.alg.transfer_every == 0:
            for name in self.fast:
                _add(stats, self._transfer(name, gen, now, counts))
        return stats

    def read_fast(self, name: str, now: float) -> torch.Tensor:
        """A's weight minus its reference, as (outputs, input lines) (exact: no periphery)."""
        a = self.fast[name]
        return _matrix(a.weight(now) - self.offset[name])

    def _transfer(self, name: str, gen: torch.Generator, now: float, counts: Counts) -> WriteStats:
        c, alg = self.arrays[name], self.alg
        cols = self.chop[name].numel()
        k = min(alg.transfer_columns, cols)
        moved = k * c.shape[0]  # weights transferred
        if self.name == "tiki_taka":
            counts.muls += moved
        else:
            counts.muls += 2 * moved
            counts.adds += (4 if self.name == "agad" else 2) * moved
        js = [(self.pointer[name] + i) % cols for i in range(k)]
        self.pointer[name] = (self.pointer[name] + k) % cols
        idx = torch.tensor(js, device=c.device)
        exact = self.read_fast(name, now).index_select(1, idx).t()  # (k, outputs)
        read = self.reads.columns(name, exact).t()  # (outputs, k): through the read periphery
        if self.name == "tiki_taka":
            out = torch.zeros(c.shape, device=c.device, dtype=c.dtype)
            _matrix(out).index_copy_(1, idx, read * alg.transfer_lr)
            return c.write(out, gen, now)
        chop = self.chop[name].index_select(0, idx)
        if self.name == "agad":
            signal = (read - self.ref[name].index_select(1, idx)) * chop
        else:
            signal = read * chop
        step = c.step
        out = torch.zeros(c.shape, device=c.device, dtype=c.dtype)
        if step == 0:  # continuous C: the filtered read is written as is
            _matrix(out).index_copy_(1, idx, signal * alg.transfer_lr)
            stats = c.write(out, gen, now)
        else:
            h = self.h[name].index_select(1, idx).add_(signal, alpha=alg.transfer_lr / step)
            n = torch.trunc(h).mul_(h.abs() >= alg.threshold)
            if alg.forget_buffer:
                h = torch.where(n != 0, h * alg.momentum, h)
            else:
                h = h - (1 - alg.momentum) * n
            self.h[name].index_copy_(1, idx, h)
            _matrix(out).index_copy_(1, idx, n)
            stats = c.write_counts(out, gen, now) if bool(n.any()) else WriteStats()
        self._chopper(name, idx, js, read, gen)
        return stats

    def _chopper(self, name: str, idx: torch.Tensor, js: list[int], read: torch.Tensor,
                 gen: torch.Generator) -> None:
        """c_ttv2: each read column's sign flips with probability in_chop_prob. agad: after every ``period``
        reads of a column, its reference becomes the mean read of the period ending, and its sign flips."""
        if self.name == "c_ttv2" and self.alg.in_chop_prob > 0:
            u = torch.rand(len(js), generator=gen, device=read.device, dtype=read.dtype)
            flip = torch.where(u < self.alg.in_chop_prob, -1.0, 1.0).to(read.dtype)
            self.chop[name].index_copy_(0, idx, self.chop[name].index_select(0, idx) * flip)
        elif self.name == "agad" and self.period:
            acc, counts = self.acc[name], self.reads_in_period[name]
            acc.index_add_(1, idx, read)
            for i, j in enumerate(js):
                counts[j] += 1
                if counts[j] >= self.period:
                    self.ref[name][:, j] = acc[:, j] / counts[j]
                    acc[:, j] = 0
                    counts[j] = 0
                    self.chop[name][j] = -self.chop[name][j]

    def exposed(self, name: str, c_weight: torch.Tensor, now: float) -> torch.Tensor:
        if self.name != "tiki_taka" or self.alg.gamma == 0:
            return c_weight
        return torch.add(c_weight, self.read_fast(name, now).view(c_weight.shape), alpha=self.alg.gamma)

    def elapse(self, seconds: float, gen: torch.Generator) -> None:
        for a in self.fast.values():
            a.elapse(seconds, gen)

    def digital_words(self) -> int:
        words = sum(t.numel() for t in self.h.values())  # H: the whole array, as aihwkit keeps it
        if self.chopped:
            words += sum(t.numel() for t in self.chop.values())  # one sign per input line
        if self.name == "agad":
            words += 2 * sum(t.numel() for t in self.h.values()) + sum(t.numel() for t in self.chop.values())
        return words

    def report(self) -> dict[str, float]:
        counts = torch.cat([torch.cat([a.pos.pulses.flatten(), a.neg.pulses.flatten()]) for a in self.fast.values()])
        return {**super().report(), "fast_devices": float(counts.numel()), "fast_pulses_total": float(counts.sum()),
                "fast_pulses_per_device_max": float(counts.max()),
                "reference_devices": float(counts.numel() // 2 if self.alg.fast_reference == "symmetry_point"
                                           else 0)}

    def state(self) -> dict[str, Any]:
        cpu = lambda d: {n: t.detach().cpu().clone() for n, t in d.items()}  # noqa: E731
        out = {**super().state(), "fast": {n: a.state() for n, a in self.fast.items()}, "pointer": dict(self.pointer),
               "h": cpu(self.h), "chop": cpu(self.chop),
               "offset": {n: (o.detach().cpu().clone() if torch.is_tensor(o) else o) for n, o in self.offset.items()}}
        if self.name == "agad":
            out.update(ref=cpu(self.ref), acc=cpu(self.acc), reads_in_period=cpu(self.reads_in_period))
        return out

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        for n, a in self.fast.items():
            a.load_state(state["fast"][n])
        self.pointer = {n: int(v) for n, v in state["pointer"].items()}
        for key in ("h", "chop") + (("ref", "acc", "reads_in_period") if self.name == "agad" else ()):
            for n, t in state[key].items():
                getattr(self, key)[n].copy_(t)
        self.offset = {n: (o.to(self.fast[n].device, self.fast[n].dtype) if torch.is_tensor(o) else float(o))
                       for n, o in state["offset"].items()}


def _add(total: WriteStats, s: WriteStats) -> None:
    total.pulses += s.pulses
    total.saturated += s.saturated
    total.refreshed += s.refreshed
    total.writes += s.writes


def make(cfg: TileConfig, arrays: dict[str, PairArray], reads: ArrayReads) -> Algorithm | None:
    """The algorithm object for ``cfg.algorithm`` (None for ``in_situ``: the target writes the update itself)."""
    name = cfg.algorithm.algorithm
    if name == "in_situ":
        return None
    if name == "mixed_precision":
        return MixedPrecision(cfg, arrays, reads)
    return Transfer(cfg, arrays, reads)
