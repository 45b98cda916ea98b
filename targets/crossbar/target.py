"""The simulated analog crossbar target: every parameter held as conductance pairs, read and written as a device would.

Relaxation runs the network's dynamics with every array read going through ``periphery.ArrayReads``;
updates go through ``devices.PairArray.write`` (pulses, asymmetry, noise, bounds), or, with another
``crossbar.algorithm`` than ``in_situ``, through ``algorithms.py`` (a fast array A and/or digital state). With every
effect off (preset ``ideal``) the states and updates equal the reference target's to float tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from hwtoolkit.network import dynamics
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.spec import NetworkSpec

from ..base import Capabilities, InputMemo, RunContext, Start, Target, TargetError, Update, UpdateReport, start_states
from ..options import TorchOptions
from . import algorithms, costs
from .config import TileConfig, device_config
from .devices import PairArray, Scratch
from .errors import CrossbarConfigError
from .ir_drop import effective_conductance
from .periphery import ArrayReads


@dataclass(frozen=True)
class CrossbarOptions(TorchOptions):
    """``device``, ``dtype``, the seed of the device draws (the run's unless set) and the device configuration."""

    seed: int = 0
    config: TileConfig = TileConfig()  # built from the [crossbar] table (and device keys in [target])


class CrossbarTarget(Target):
    """A simulated analog crossbar (docs/crossbar.md): pass ``preset=`` and any device parameter as options."""

    description = ("simulated analog crossbar with device non-idealities (options: device, dtype, seed; the "
                   "[crossbar] table: preset = 'ideal' | 'reram-exp' | ... | a .toml file, any device parameter)")
    Options = CrossbarOptions
    tables = ("crossbar",)

    @classmethod
    def configure(cls, options: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]] | None = None,
                  context: RunContext = RunContext()) -> CrossbarOptions:
        """Device parameters may come from the ``[crossbar]`` table or, as keywords, with the target's options."""
        super().configure({}, tables, context)  # rejects tables the crossbar does not read
        own = {f.name for f in fields(CrossbarOptions)} - {"config"}
        merged = {**options, **(tables or {}).get("crossbar", {})}
        try:
            config = device_config(**{k: v for k, v in merged.items() if k not in own})
        except CrossbarConfigError as e:
            raise TargetError(str(e)) from None
        return cls.build_options({**{k: v for k, v in merged.items() if k in own}, "config": config}, context)

    @classmethod
    def writes_trains(cls, options: CrossbarOptions) -> bool:
        return options.config.update == "two_trains"

    def __init__(self, spec: NetworkSpec, options: CrossbarOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(spec, options, **kwargs)
        self.config: TileConfig = self.options.config
        if self.config.read.ir_drop and spec.conv:
            raise TargetError("crossbar.ir_drop is modelled for dense layers only; this network has convolutions")
        self.device = self.options.torch_device
        self.dtype = self.options.torch_dtype
        seed = self.seed = self.options.seed
        self.now = 0.0  # simulated seconds since the devices were made
        self._cpu_gen = torch.Generator().manual_seed(seed)
        self._gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.arrays: dict[str, PairArray] = {}
        self._weights: dict[str, torch.Tensor] | None = None
        self._ir_weights: dict[tuple[str, bool], torch.Tensor] = {}
        self._drive_memo = InputMemo()
        self._drives: dict = {}  # the phase drives (quiet, noisy) and their array product, per input and weights
        self._version = 0
        self._reads = ArrayReads(self.config.read, spec.tied, lambda n: self.arrays[n].scale, self._ir_weight,
                                 lambda: self._gen, self.config.numerics)
        self.totals = {"saturated": 0, "refreshed": 0, "clipped_on_program": 0, "writes": 0}
        self.algorithm: algorithms.Algorithm | None = None  # None: in_situ, the update written straight to C
        self.ledger = costs.Ledger()  # what every phase and update did, for cost_report()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(name=self.name, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
                            exact=False, update_trains=self.writes_trains(self.options), models_time=True,
                            device_state=True,
                            notes=f"preset {self.config.preset}; update {self.config.update}; "
                                  f"algorithm {self.config.algorithm.name}")

    # ---- weights ---------------------------------------------------------------------------------------------

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
        if not self.arrays:
            self._make_arrays(weights)
        for name, w in weights.items():
            self.totals["clipped_on_program"] += self.arrays[name].program(w.detach(), self._gen, self.now)
        if self.algorithm is not None:  # the weights are C's; A and the digital state start afresh
            self.algorithm.reset(self._gen, self.now)
        self._changed()

    def _make_arrays(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Fix each tensor's weight scale from the first weights programmed, and draw its devices."""
        peaks = {n: float(w.detach().abs().max()) for n, w in weights.items()}
        fallback = max(peaks.values()) or 1.0
        self._draw_arrays({n: (peaks[n] or fallback) / self.config.device.weight_omega for n in peaks})

    def _draw_arrays(self, scales: Mapping[str, float]) -> None:
        """Draw every array's devices from the target's seed, with the given weight scales."""
        scratch = Scratch(self.device, self.dtype)  # the arrays write one after another
        for name, shape in self.spec.parameter_shapes().items():
            scale = scales[name]
            self.arrays[name] = PairArray(self.config, tuple(shape), self._cpu_gen, self.device, self.dtype, scale,
                                          scratch)
        self.algorithm = algorithms.make(self.config, self.arrays, self._reads)
        if self.algorithm is not None:  # its own devices are drawn after C's
            self.algorithm.draw(self._cpu_gen, self.device, self.dtype, scratch)

    def _changed(self) -> None:
        self._weights = None
        self._ir_weights = {}
        self._version += 1

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """What the arrays hold now, as weights on the target's device (what every read starts from).

        The tensors are the arrays' buffers, overwritten when the weights change; ``read_weights`` gives copies.
        """
        if not self.arrays:
            raise TargetError("the target holds no weights yet: call program(weights) first")
        if self._weights is None:
            self._weights = {n: a.weight(self.now) for n, a in self.arrays.items()}
            if self.algorithm is not None:
                self._weights = {n: self.algorithm.exposed(n, w, self.now) for n, w in self._weights.items()}
        return self._weights

    def _ir_weight(self, name: str, transposed: bool) -> torch.Tensor:
        """Array ``name`` as an IR-dropped read sees it, inputs first; computed once per weight change."""
        key = (name, transposed)
        if key not in self._ir_weights:
            a = self.arrays[name]
            pos, neg = (a.visible(d, self.now).flatten(1) for d in (a.pos, a.neg))
            if not transposed:
                pos, neg = pos.t(), neg.t()
            r = self.config.read.ir_drop
            self._ir_weights[key] = a.scale * (effective_conductance(pos, r) - effective_conductance(neg, r))
        return self._ir_weights[key]

    def _read_weights(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().clone() for n, t in self.weights.items()}

    # ---- relaxation ------------------------------------------------------------------------------------------

    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        x = x.to(self.device, self.dtype)
        y = None if y is None else y.to(self.device)
        states = start_states(start, self.device, self.dtype)
        params = self.weights
        counts = self._reads.counts = self.ledger.begin_phase(beta, x.shape[0])
        result = self._run_phase(x, steps, beta, y, states, params, stop_tolerance)
        self._count_phase(counts, beta != 0, result.steps, x.shape[0])
        return result

    def _run_phase(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None,
                       states: list[torch.Tensor] | None, params: dict[str, torch.Tensor],
                       stop_tolerance: float) -> Relaxation:
        """One phase through the read periphery (whose reads count into ``self._reads.counts``)."""
        if self._drive_memo.changed(x, self._version):
            self._drives = {}  # drives of another input or other weights
        per_step = self.config.read.read_noise == "step"
        with torch.no_grad():
            if per_step or steps == 1:
                drive = self._phase_drive(x, noisy=True)
                return dynamics.relax(self.spec, params, x, steps, beta, y, states, drive, stop_tolerance,
                                      self._reads.reads())
            else:  # settle without read noise, then read the equilibrium with it
                quiet = dynamics.relax(self.spec, params, x, steps - 1, beta, y, states,
                                       self._phase_drive(x, noisy=False), stop_tolerance, self._reads.reads())
                end = dynamics.step(self.spec, params, self._phase_drive(x, noisy=True)(), quiet.states, beta, y,
                                    self._reads.reads())
                return Relaxation(tuple(end), dynamics.logits(self.spec, params, end[-1]), quiet.steps + 1,
                                  quiet.residual)

    def _count_phase(self, counts: costs.Counts, nudged: bool, steps: int, examples: int) -> None:
        """The digital work of a phase's steps, and the CE readout's reads (read exactly by the simulation: the
        scores at the end, and with the nudge the scores and ``g W_out`` at every step)."""
        counts.add(costs.step_ops(self.spec, nudged), steps * examples)
        if self.spec.output == "ce":
            nudged_steps = steps if nudged else 0
            costs.readout_read(counts, self.spec, examples * (1 + nudged_steps), transposed=False)
            costs.readout_read(counts, self.spec, examples * nudged_steps, transposed=True)

    def _phase_drive(self, x: torch.Tensor, noisy: bool):
        """The input drive, and read noise on or off for the phase's other reads too.

        The drive's array product is computed once per input and weights; a noisy drive draws fresh
        read noise on it at each call. ``relax`` has checked the cache against ``x`` already.
        """
        self._reads.noisy = noisy
        noisy = noisy and self.config.read.has_noise
        if noisy not in self._drives:
            normalized = dynamics.normalize_input(self.spec, x)
            self._drives[noisy] = self._reads.drive(self.spec.layers[0], self.weights["w1"], self.weights["b1"],
                                                    normalized, self._drives)
        return self._drives[noisy]

    # ---- updates ---------------------------------------------------------------------------------------------

    def _apply_update(self, update: Update) -> UpdateReport:
        """Write the increment; with ``update = 'two_trains'`` write ``trains[0]`` then ``-trains[1]`` instead.

        The trains add up to the increment; written one after the other, asymmetric devices do not cancel them.
        """
        if self.capabilities.update_trains:
            writes = [dict(update.trains[0]), {n: -t for n, t in update.trains[1].items()}]
        else:
            writes = [dict(update.delta)]
        counts = self._reads.counts = self.ledger.begin_write()
        if self.algorithm is not None:  # the algorithm decides what reaches the devices
            done = [self.algorithm.apply(writes, update.delta, self._gen, self.now, counts)]
        else:
            done = [self.arrays[name].write(d, self._gen, self.now) for write in writes for name, d in write.items()]
        report = UpdateReport(saturated=sum(s.saturated for s in done))
        pulses = sum(s.pulses for s in done)
        self.totals["refreshed"] += sum(s.refreshed for s in done)
        self.totals["saturated"] += report.saturated
        self.totals["writes"] += 1
        report.details = {"pulses": pulses}
        counts.pulses += pulses
        counts.array_writes += sum(s.writes for s in done)
        self.ledger.close_update()
        self._wait(self.config.time.time_per_update)
        self._changed()
        return report

    def _wait(self, seconds: float) -> None:
        """Drift, decay and diffusion act over ``seconds`` of simulated time; nothing is forgotten."""
        self.now += seconds
        if self.config.time.lifetime or self.config.time.diffusion:
            for a in self.arrays.values():
                a.elapse(seconds, self._gen)
            if self.algorithm is not None:
                self.algorithm.elapse(seconds, self._gen)
        if self.config.time.active:
            self._changed()

    # ---- device state ----------------------------------------------------------------------------------------

    def _device_state(self) -> dict[str, Any]:
        """Simulated time, counters, random states, and per array its scale and every device's mutable state.

        What each device was drawn with (bounds, step gains, stuck devices, drift exponents) is not stored: it
        is drawn again from the seed, in the same order, when the state is loaded.
        """
        arrays = {name: a.state() for name, a in self.arrays.items()}
        out = {"seed": self.seed, "now": self.now, "totals": dict(self.totals), "arrays": arrays,
               "gen": self._gen.get_state(), "cpu_gen": self._cpu_gen.get_state(), "costs": self.ledger.state()}
        if self.algorithm is not None:
            out["algorithm"] = {"name": self.algorithm.name, **self.algorithm.state()}
        return out

    def _load_device_state(self, state: Mapping[str, Any]) -> None:
        if state.get("seed") != self.seed:
            raise TargetError(f"the saved device was drawn with seed {state.get('seed')!r}, this target with "
                              f"{self.seed}")
        saved = state.get("arrays")
        if not isinstance(saved, Mapping) or set(saved) != set(self.spec.parameter_shapes()):
            raise TargetError(f"the saved device holds {sorted(saved) if isinstance(saved, Mapping) else saved!r}, "
                              f"this network {sorted(self.spec.parameter_shapes())}")
        try:
            self._cpu_gen.manual_seed(self.seed)
            self._draw_arrays({n: float(a["scale"]) for n, a in state["arrays"].items()})
            for name, saved in state["arrays"].items():
                self.arrays[name].load_state(saved)
            if self.algorithm is not None or "algorithm" in state:
                saved_alg = state.get("algorithm") or {"name": "in_situ"}
                if self.algorithm is None or saved_alg["name"] != self.algorithm.name:
                    raise ValueError(f"the saved device trained with algorithm {saved_alg['name']!r}, this target "
                                     f"with {self.config.algorithm.name!r}")
                self.algorithm.load_state(saved_alg)
            self.now = float(state["now"])
            self.totals = {k: int(v) for k, v in state["totals"].items()}
            # a state saved before the cost accounting existed starts counting afresh
            self.ledger = costs.Ledger.from_state(state["costs"]) if "costs" in state else costs.Ledger()
            self._gen.set_state(state["gen"])
            self._cpu_gen.set_state(state["cpu_gen"])
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            self.arrays = {}
            self.algorithm = None
            raise TargetError(f"the saved crossbar state does not fit this target ({type(e).__name__}: {e})") \
                from None
        self._changed()

    # ---- reports ---------------------------------------------------------------------------------------------

    def device_report(self) -> dict[str, float]:
        """Pulses, wear and write energy so far, over every device of every array."""
        counts = torch.cat([torch.cat([a.pos.pulses.flatten(), a.neg.pulses.flatten()]) for a in self.arrays.values()])
        devices = counts.numel()
        return {
            "devices": devices,
            "writes": self.totals["writes"],
            "pulses_total": float(counts.sum()),
            "pulses_per_device_mean": float(counts.mean()),
            "pulses_per_device_max": float(counts.max()),
            "worn_fraction": float((counts > self.config.device.endurance).double().mean()),
            "lifetime_used_max": float(counts.max() / self.config.device.endurance),
            "write_energy_uj": float(counts.sum()) * self.config.device.pulse_energy_pj * 1e-6,
            "saturated_pulsed_devices": self.totals["saturated"],
            "refreshes": self.totals["refreshed"],
            "clipped_on_program": self.totals["clipped_on_program"],
            "simulated_seconds": self.now,
            **(self.algorithm.report() if self.algorithm is not None else {"digital_words": 0.0}),
        }

    def cost_report(self) -> dict[str, Any]:
        """What the training batches so far cost, and what backprop would cost, per batch and per example
        (costs.py; docs/crossbar.md, "Cost accounting"). Empty before the first training batch."""
        cfg = self.config
        write = cfg.write
        pricing = costs.Pricing(cfg.costs, (cfg.device.g_min + cfg.device.g_max) / 2, cfg.device.pulse_energy_pj,
                                cfg.read.forward.adc_bits, cfg.read.transposed.adc_bits,
                                write.max_pulses or costs.UNCAPPED_SLOTS)
        words = self.algorithm.digital_words() if self.algorithm is not None else 0
        return costs.report(self.ledger, self.spec, pricing, words)

    def symmetry_points(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Per parameter, the (pos, neg) devices' symmetry points (normalized conductance), or None."""
        return {n: a.symmetry_points() for n, a in self.arrays.items()}
