"""Time one training step: the engine, the autograd-of-Phi formulation, and BPTT.

One step = the phases of the configured estimator + the update + the optimizer
step written to the target. The engine uses the analytic relaxation step and
computes the input drive once per batch; the autograd-of-Phi formulation (as in
the public EP research code) evaluates Phi and its state gradient with autograd
at every step. Prints a table and writes JSON (default benchmarks/results/step_speed.json).

    python benchmarks/step_speed.py [--config configs/fmnist_mlp.toml] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import targets  # noqa: E402
from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.network.autograd_phi import ep_update_autograd, relax_autograd  # noqa: E402
from hwtoolkit.network.parameters import init_parameters  # noqa: E402
from hwtoolkit.training.estimators import make_estimator  # noqa: E402
from hwtoolkit.training.optimizer import SGD  # noqa: E402


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


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


def measure(cfg, device: str, batch: int, warmup: int, repeats: int, formulations=FORMULATIONS) -> dict:
    spec = cfg.network
    target = targets.open("reference", spec, device=device, dtype="float32")
    target.program(init_parameters(spec, cfg.seed))
    dev = target.device
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *spec.input_shape, generator=gen).to(dev)
    y = torch.randint(0, spec.classes, (batch,), generator=gen).to(dev)
    lrs = cfg.layer_lrs()
    layer_of = spec.parameter_layers()

    def optimizer() -> SGD:
        return SGD({n: lrs[i] for n, i in layer_of.items()}, cfg.optim.momentum)

    def engine_step(estimator_name: str) -> Callable[[], None]:
        estimator, opt = make_estimator(estimator_name, cfg.ep), optimizer()
        return lambda: target.apply_update(opt.step(estimator(target, x, y, gen).direction, None))

    # identical states from both formulations, on the same weights
    with torch.no_grad():
        ref_free = target.relax(x, cfg.ep.free_steps)
        ref_plus = target.relax(x, cfg.ep.nudged_steps, cfg.ep.beta, y, init=ref_free)
    auto_free = relax_autograd(spec, target.params, x, cfg.ep.free_steps)
    auto_plus = relax_autograd(spec, target.params, x, cfg.ep.nudged_steps, cfg.ep.beta, y, auto_free.states)
    state_diff = max((a - b).abs().max().item() for a, b in zip(ref_free.states + ref_plus.states,
                                                               auto_free.states + auto_plus.states))

    engine_name, autograd_name = f"engine ({cfg.estimator})", f"autograd of Phi ({cfg.estimator})"
    runs = {
        engine_name: ("engine", engine_step(cfg.estimator)),
        autograd_name: ("autograd", lambda: autograd_phi_step(cfg, target, optimizer())(x, y)),
        "BPTT": ("bptt", engine_step("bptt")),
    }
    seconds = {name: timed(fn, dev, warmup, repeats) for name, (kind, fn) in runs.items() if kind in formulations}
    target.close()
    rows = {name: {"seconds_per_step": s, "samples_per_second": batch / s} for name, s in seconds.items()}
    result = {"device": str(dev), "batch": batch, "rows": rows, "max_state_difference_engine_vs_autograd": state_diff}
    if engine_name in seconds and autograd_name in seconds:
        result["engine_speedup_vs_autograd_phi"] = seconds[autograd_name] / seconds[engine_name]
    if engine_name in seconds and "BPTT" in seconds:
        result["engine_speedup_vs_bptt"] = seconds["BPTT"] / seconds[engine_name]
    return result


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
    parser.add_argument("--out", default="benchmarks/results/step_speed.json")
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config, args.set)
    batch = args.batch or cfg.train.batch_size
    results = []
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"skipping {device}: CUDA is not available on this machine")
            continue
        results.append(measure(cfg, device, batch, args.warmup, args.repeats, args.formulations.split(",")))

    print(f"\n{cfg.name}: {cfg.network.describe()}, T1={cfg.ep.free_steps}, T2={cfg.ep.nudged_steps}, batch {batch}")
    print(f"{'device':8} {'formulation':32} {'ms/step':>10} {'samples/s':>12}")
    for r in results:
        for name, row in r["rows"].items():
            print(f"{r['device']:8} {name:32} {1e3 * row['seconds_per_step']:10.2f} {row['samples_per_second']:12.0f}")
        speedups = [f"{r[k]:.2f}x vs {label}" for k, label in (("engine_speedup_vs_autograd_phi", "autograd of Phi"),
                                                                 ("engine_speedup_vs_bptt", "BPTT")) if k in r]
        print(f"{r['device']:8} engine speed-up: {', '.join(speedups) or 'n/a'}; max state difference "
              f"{r['max_state_difference_engine_vs_autograd']:.1e}")
    report = {"benchmark": "step_speed", "config": args.config, "overrides": args.set, "network": cfg.network.describe(),
              "estimator": cfg.estimator, "free_steps": cfg.ep.free_steps, "nudged_steps": cfg.ep.nudged_steps,
              "machine": machine(), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
