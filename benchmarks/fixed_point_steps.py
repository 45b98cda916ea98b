"""Steps and time to a phase's fixed point: plain or Anderson-accelerated, synchronous or alternating updates.

For each network, one batch relaxes its free phase and its nudged phase (``+beta`` from the free fixed point)
until no unit moves by more than ``--tolerance`` (float32, at most ``--max-steps`` steps), with each solver.
The reference fixed point is the plain synchronous iteration in float64 run to 1e-10; the table gives each
solver's steps, time and distance from it, and the configured schedule's (``free_steps``/``nudged_steps``
steps, no tolerance) for comparison. Fashion-MNIST test images feed the F-MNIST networks, uniform random
images the CIFAR-10 ConvNet (unless its data are installed). Weights are the config's initial ones, or a
trained run's (``--weights NAME=RUN_DIR``: trained weights make the nudged phase harder). Prints a table and
writes JSON.

    python benchmarks/fixed_point_steps.py [--networks fmnist_mlp,mlp3_mse] [--device cpu] [--batch 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import chosen_names  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from hwtoolkit import config as config_mod  # noqa: E402
from hwtoolkit.network import dynamics  # noqa: E402
from hwtoolkit.network.anderson import relax_anderson  # noqa: E402
from hwtoolkit.network.parameters import init_parameters  # noqa: E402
from hwtoolkit.network.precision import compute_precision  # noqa: E402

NETWORKS = {  # name -> (config, overrides)
    "fmnist_mlp": ("configs/fmnist_mlp.toml", []),
    "mlp2_mse": ("configs/fmnist_mlp.toml", ["network.hidden=[512, 512]", "network.output='mse'", "optim.lr=[0.05]"]),
    "mlp3_mse": ("configs/fmnist_mlp.toml", ["network.hidden=[256, 256, 256]", "network.output='mse'",
                              "optim.lr=[0.05]"]),
    "cifar10_conv": ("configs/cifar10_conv.toml", []),
}
SOLVERS = {  # name -> (update, relax function)
    "plain, synchronous": ("synchronous", dynamics.relax),
    "plain, alternating": ("alternating", dynamics.relax),
    "anderson, synchronous": ("synchronous", relax_anderson),
    "anderson, alternating": ("alternating", relax_anderson),
}


def batch_for(cfg, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``batch`` test images of the config's data set, or uniform random ones where it is absent."""
    from hwtoolkit.data import load_dataset
    from hwtoolkit.data.errors import DatasetNotFoundError

    try:
        data = load_dataset(cfg.data.dataset, root=cfg.data.root or None, download=False)
        x, y = data.test_x[:batch].float().div(255.0), data.test_y[:batch]
        source = f"{cfg.data.dataset} test images"
    except DatasetNotFoundError:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, *cfg.network.input_shape, generator=gen)
        y = torch.randint(0, cfg.network.classes, (batch,), generator=gen)
        source = "uniform random images"
    return x.to(device), y.to(device), source


def timed_phase(fn, device: torch.device):
    """``fn()`` and its seconds, in IEEE float32 (no TF32 on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with compute_precision("float32", device):
        result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def distance(a, b) -> float:
    return max((s.double() - t.double()).abs().max().item() for s, t in zip(a, b))


def measure(name: str, batch: int, device: torch.device, tolerance: float, max_steps: int,
            reference_steps: int, run_dir: str | None = None) -> dict:
    path, sets = NETWORKS[name]
    cfg = config_mod.load(path, sets)
    spec, ep = cfg.network, cfg.ep
    x, y, source = batch_for(cfg, batch, device)
    if run_dir:
        from hwtoolkit.training import checkpoint

        weights = checkpoint.load(Path(run_dir) / "checkpoints" / "best.pt")["weights"]
    else:
        weights = init_parameters(spec, cfg.seed)
    params = {n: t.to(device, torch.float32) for n, t in weights.items()}
    p64 = {n: t.double() for n, t in params.items()}
    ref_free = dynamics.relax(spec, p64, x.double(), reference_steps, stop_tolerance=1e-10)
    ref_nudged = dynamics.relax(spec, p64, x.double(), reference_steps, ep.beta, y, ref_free.states,
                                stop_tolerance=1e-10)
    rows = {}
    start = [t.float() for t in ref_free.states]  # every nudged phase starts from the same free fixed point
    with torch.no_grad():
        free, t_free = timed_phase(lambda: dynamics.relax(spec, params, x, ep.free_steps), device)
        nudged, t_nudged = timed_phase(lambda: dynamics.relax(spec, params, x, ep.nudged_steps, ep.beta, y, start),
                                       device)
        rows[f"schedule T1={ep.free_steps}, T2={ep.nudged_steps}"] = _row(free, t_free, nudged, t_nudged,
                                                                         ref_free, ref_nudged)
        for solver, (update, relax) in SOLVERS.items():
            s = dataclasses.replace(spec, update=update)
            free, t_free = timed_phase(lambda: relax(s, params, x, max_steps, stop_tolerance=tolerance), device)
            nudged, t_nudged = timed_phase(lambda: relax(s, params, x, max_steps, ep.beta, y, start,
                                                         stop_tolerance=tolerance), device)
            rows[solver] = _row(free, t_free, nudged, t_nudged, ref_free, ref_nudged)
    return {"network": spec.describe(), "config": path, "overrides": sets, "inputs": source, "batch": batch,
            "weights": run_dir or f"initial (seed {cfg.seed})",
            "beta": ep.beta, "reference_steps": [ref_free.steps, ref_nudged.steps], "rows": rows}


def _row(free, t_free, nudged, t_nudged, ref_free, ref_nudged) -> dict:
    return {"free_steps": free.steps, "free_seconds": t_free, "free_distance": distance(free.states, ref_free.states),
            "nudged_steps": nudged.steps, "nudged_seconds": t_nudged,
            "nudged_distance": distance(nudged.states, ref_nudged.states)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="fmnist_mlp,mlp2_mse,mlp3_mse", help=f"comma-separated, from "
                        f"{list(NETWORKS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="stop once no unit moves by more (float32)")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--reference-steps", type=int, default=5000, help="cap of the float64 reference")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="use the best weights of a trained run for network NAME")
    parser.add_argument("--json", default="benchmarks/results/fixed_point_steps.json")
    args = parser.parse_args(argv)
    weights = dict(w.split("=", 1) for w in args.weights if "=" in w)
    if len(weights) != len(args.weights) or set(weights) - set(NETWORKS):
        parser.error(f"--weights takes NAME=RUN_DIR with NAME from {list(NETWORKS)}, got {args.weights}")
    names = chosen_names(parser, "--networks", args.networks, NETWORKS)
    if args.tolerance <= 0 or args.batch < 1 or args.max_steps < 1:
        parser.error("--tolerance must be > 0, --batch and --max-steps >= 1")
    device = torch.device(args.device)
    results = {n: measure(n, args.batch, device, args.tolerance, args.max_steps, args.reference_steps,
                          weights.get(n)) for n in names}
    print(f"\nsteps to a fixed point (tolerance {args.tolerance:g}, float32, batch {args.batch}, {device}); "
          "distance = max |s - s_ref| against the float64 fixed point")
    print(f"{'network':14} {'solver':24} {'free steps':>10} {'ms':>8} {'distance':>9} "
          f"{'nudged steps':>12} {'ms':>8} {'distance':>9}")
    for name, r in results.items():
        for solver, row in r["rows"].items():
            print(f"{name:14} {solver:24} {row['free_steps']:10d} {1e3 * row['free_seconds']:8.1f} "
                  f"{row['free_distance']:9.1e} {row['nudged_steps']:12d} {1e3 * row['nudged_seconds']:8.1f} "
                  f"{row['nudged_distance']:9.1e}")
    write_report(args.json, {"tolerance": args.tolerance, "device": str(device), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
