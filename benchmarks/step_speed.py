"""Time one training step: the engine, the autograd-of-Phi formulation, and BPTT.

One step = the phases of the configured estimator + the update + the optimizer
step written to the target. The engine uses the analytic relaxation step and
computes the input drive once per batch; the autograd-of-Phi formulation (as in
the public EP research code) evaluates Phi and its state gradient with autograd
at every step. The engine runs on the reference target with the options of the
config's ``[target]`` table when it names the reference target (set with ``--set
target.precision=tf32`` and the like; device and dtype are the benchmark's); the
baselines run in the same precision.
The engine's achieved TFLOP/s counts its matmul and convolution FLOPs
(``hwtoolkit.network.flops``) over the steps its phases really ran; ``--peak``
also measures the device's matmul peak in a precision to compare with, and
``--fidelity`` the cosine of the engine's update with the float64 update of the
config's schedule (plain iteration, same weights and batch). Prints a table and
writes JSON (default benchmarks/results/step_speed.json).

    python benchmarks/step_speed.py [--config configs/fmnist_mlp.toml] [--devices cpu,cuda]
        [--set target.precision=tf32] [--peak tf32] [--fidelity]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import targets  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.diagnostics.precision import agreement  # noqa: E402
from hwtoolkit.network.autograd_phi import ep_update_autograd, relax_autograd  # noqa: E402
from hwtoolkit.network.flops import NUDGED_PHASES, batch_flops  # noqa: E402
from hwtoolkit.network.parameters import init_parameters  # noqa: E402
from hwtoolkit.network.precision import compute_precision  # noqa: E402
from hwtoolkit.training.estimators import make_estimator  # noqa: E402
from hwtoolkit.training.optimizer import SGD  # noqa: E402


def timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autograd_phi_step(cfg, target, optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The same estimator as the public research code computes it: every relaxation step and the update by autograd
    of Phi."""
    spec, ep = cfg.network, cfg.ep

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        p = target.params
        free = relax_autograd(spec, p, x, ep.free_steps)
        plus = relax_autograd(spec, p, x, ep.nudged_steps, ep.beta, y, free.states)
        if cfg.estimator == "symmetric":
            minus = relax_autograd(spec, p, x, ep.nudged_steps, -ep.beta, y, free.states)
            direction = ep_update_autograd(spec, p, x, y, (plus, ep.beta), (minus, -ep.beta))
        else:
            direction = ep_update_autograd(spec, p, x, y, (plus, ep.beta), (free, 0.0))
        target.apply_update(optimizer.step(direction, None))
    return run


FORMULATIONS = ("engine", "autograd", "bptt")


def measure(cfg, device: str, batch: int, warmup: int, repeats: int, formulations=FORMULATIONS,
            options: dict | None = None, peak: str | None = None, fidelity: bool = False) -> dict:
    spec = cfg.network
    options = dict(options or {})
    target = targets.open("reference", spec, device=device, dtype="float32", **options)
    target.program(init_parameters(spec, cfg.seed))
    dev = target.device
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *spec.input_shape, generator=gen).to(dev)
    y = torch.randint(0, spec.classes, (batch,), generator=gen).to(dev)
    lrs = cfg.layer_lrs()
    layer_of = spec.parameter_layers()
    precision = options.get("precision", "float32")

    def optimizer() -> SGD:
        return SGD({n: lrs[i] for n, i in layer_of.items()}, cfg.optim.momentum)

    phase_steps: list[int] = []
    relax = target.relax

    def counted_relax(*args, **kwargs):
        result = relax(*args, **kwargs)
        phase_steps.append(result.steps)
        return result

    def engine_step(estimator_name: str) -> Callable[[], None]:
        estimator, opt = make_estimator(estimator_name, cfg.ep), optimizer()
        return lambda: target.apply_update(opt.step(estimator(target, x, y, gen).direction, None))

    def in_precision(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with compute_precision(precision, dev):
                fn()
        return run

    result: dict = {"device": str(dev), "batch": batch, "target_options": options}
    if fidelity:
        result["update_fidelity"] = target_update_fidelity(cfg, target, x, y)
    # identical states from both formulations, on the same weights
    with torch.no_grad():
        ref_free = target.relax(x, cfg.ep.free_steps)
        ref_plus = target.relax(x, cfg.ep.nudged_steps, cfg.ep.beta, y, init=ref_free)
    with compute_precision(precision, dev):
        auto_free = relax_autograd(spec, target.params, x, cfg.ep.free_steps)
        auto_plus = relax_autograd(spec, target.params, x, cfg.ep.nudged_steps, cfg.ep.beta, y, auto_free.states)
    result["max_state_difference_engine_vs_autograd"] = max(
        (a - b).abs().max().item() for a, b in zip(ref_free.states + ref_plus.states, auto_free.states + auto_plus.states))

    engine_name, autograd_name = f"engine ({cfg.estimator})", f"autograd of Phi ({cfg.estimator})"
    runs = {
        engine_name: ("engine", engine_step(cfg.estimator)),
        autograd_name: ("autograd", in_precision(lambda: autograd_phi_step(cfg, target, optimizer())(x, y))),
        "BPTT": ("bptt", in_precision(engine_step("bptt"))),
    }
    seconds = {}
    for name, (kind, fn) in runs.items():
        if kind in formulations:
            target.relax = counted_relax if kind == "engine" else relax
            seconds[name] = timed(fn, dev, warmup, repeats)
    target.relax = relax
    target.close()
    result["rows"] = {name: {"seconds_per_step": s, "samples_per_second": batch / s} for name, s in seconds.items()}
    if engine_name in seconds and autograd_name in seconds:
        result["engine_speedup_vs_autograd_phi"] = seconds[autograd_name] / seconds[engine_name]
    if engine_name in seconds and "BPTT" in seconds:
        result["engine_speedup_vs_bptt"] = seconds["BPTT"] / seconds[engine_name]
    if engine_name in seconds and cfg.estimator != "bptt":
        result.update(engine_flops(cfg, phase_steps, batch, seconds[engine_name]))
        if peak:
            from benchmarks.matmul_peak import measure_matmul_peak

            result["matmul_peak"] = {"precision": peak, "tflops": measure_matmul_peak(dev, precision=peak)}
            result["engine_fraction_of_peak"] = result["engine_tflops"] / result["matmul_peak"]["tflops"]
    return result


def engine_flops(cfg, phase_steps: list[int], batch: int, seconds: float) -> dict:
    """FLOPs of one engine batch from the steps its phases ran (free, then nudged ones), and the rate achieved."""
    phases = 1 + NUDGED_PHASES[cfg.estimator]
    runs = [phase_steps[i:i + phases] for i in range(0, len(phase_steps) - phases + 1, phases)]
    free = statistics.mean(r[0] for r in runs)
    nudged = statistics.mean(s for r in runs for s in r[1:])
    flops = batch_flops(cfg.network, free, nudged, cfg.estimator, batch)
    return {"engine_steps": {"free": free, "nudged": nudged}, "engine_flops_per_batch": flops,
            "engine_tflops": flops / seconds / 1e12}


def target_update_fidelity(cfg, target, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Cosine and relative error, per parameter, of the target's update against the float64 update of the
    config's schedule (plain iteration, every step) on the same weights and batch."""
    reference = targets.open("reference", cfg.network, device=str(target.device), dtype="float64")
    reference.program(target.read_weights())
    full = dataclasses.replace(cfg.ep, stop_tolerance=0.0)
    want = make_estimator(cfg.estimator, full)(reference, x.double(), y, torch.Generator().manual_seed(1)).direction
    got = make_estimator(cfg.estimator, cfg.ep)(target, x, y, torch.Generator().manual_seed(1)).direction
    reference.close()
    rows = {n: agreement(got[n].double(), want[n]).as_dict() for n in want}
    worst = min(rows, key=lambda n: rows[n]["cosine"])
    return {"parameters": rows, "worst_parameter": worst, "worst_cosine": rows[worst]["cosine"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_mlp.toml")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped where absent")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--formulations", default=",".join(FORMULATIONS),
                        help="comma-separated subset of engine,autograd,bptt (BPTT of a deep ConvNet needs much memory)")
    parser.add_argument("--peak", default=None, metavar="PRECISION",
                        help="also measure the matmul peak in this precision (float32, tf32, bfloat16, ...)")
    parser.add_argument("--fidelity", action="store_true", help="cosine of the engine's update with float64")
    parser.add_argument("--out", default="benchmarks/results/step_speed.json")
    args = parser.parse_args(argv)
    if args.peak is not None:
        from benchmarks.matmul_peak import PRECISIONS

        if args.peak not in PRECISIONS:
            parser.error(f"--peak {args.peak!r}: valid precisions are {list(PRECISIONS)}")
    cfg = config_mod.load(args.config, args.set)
    # the engine is the reference target's: its [target] options apply, another target's do not
    options = {k: v for k, v in cfg.target.options.items()
               if cfg.target.name == "reference" and k not in ("device", "dtype")}
    batch = args.batch or cfg.train.batch_size
    results = []
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"skipping {device}: CUDA is not available on this machine")
            continue
        results.append(measure(cfg, device, batch, args.warmup, args.repeats, args.formulations.split(","), options,
                               args.peak, args.fidelity))

    print(f"\n{cfg.name}: {cfg.network.describe()}, T1={cfg.ep.free_steps}, T2={cfg.ep.nudged_steps}, batch {batch}")
    print(f"{'device':8} {'formulation':32} {'ms/step':>10} {'samples/s':>12}")
    for r in results:
        for name, row in r["rows"].items():
            print(f"{r['device']:8} {name:32} {1e3 * row['seconds_per_step']:10.2f} {row['samples_per_second']:12.0f}")
        speedups = [f"{r[k]:.2f}x vs {label}" for k, label in (("engine_speedup_vs_autograd_phi", "autograd of Phi"),
                                                                 ("engine_speedup_vs_bptt", "BPTT")) if k in r]
        print(f"{r['device']:8} engine speed-up: {', '.join(speedups) or 'n/a'}; max state difference "
              f"{r['max_state_difference_engine_vs_autograd']:.1e}")
        if "engine_tflops" in r:
            steps = r["engine_steps"]
            peak = (f" = {100 * r['engine_fraction_of_peak']:.1f}% of the {r['matmul_peak']['precision']} matmul peak "
                    f"{r['matmul_peak']['tflops']:.3g} TFLOP/s" if "matmul_peak" in r else "")
            print(f"{r['device']:8} engine: {steps['free']:.1f} free / {steps['nudged']:.1f} nudged steps, "
                  f"{r['engine_flops_per_batch'] / 1e9:.1f} GFLOP per batch, {r['engine_tflops']:.3g} TFLOP/s{peak}")
        if "update_fidelity" in r:
            f = r["update_fidelity"]
            print(f"{r['device']:8} update vs float64: worst cosine {f['worst_cosine']:.6f} ({f['worst_parameter']})")
    report = {"benchmark": "step_speed", "config": args.config, "overrides": args.set,
              "network": cfg.network.describe(),
              "estimator": cfg.estimator, "free_steps": cfg.ep.free_steps, "nudged_steps": cfg.ep.nudged_steps,
              "results": results}
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
