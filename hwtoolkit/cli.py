"""Command line: ``hwtoolkit train | evaluate | gdu | sweep | tune | export | targets | board``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NoReturn

from hwtoolkit import api, config as config_mod, schema
from hwtoolkit.data import DatasetNotFoundError
from hwtoolkit.diagnostics.gdu import ESTIMATORS as GDU_ESTIMATORS
from hwtoolkit.executors import KINDS, MAX_RETRIES, ExecutorSpec
from hwtoolkit.tuning.study import MAX_TRIALS, PRUNERS
from hwtoolkit.training.checkpoint import CheckpointError
from hwtoolkit.files import DirectoryLockedError
from hwtoolkit.training.loop import RunExistsError
from quantize.export import FORMATS as EXPORT_FORMATS, MAX_UNROLLED_STEPS
from targets import TargetError


MAX_WAIT = 1e12  # simulated seconds (about 30,000 years)


class UsageError(ValueError):
    """A command-line option is invalid in a way argparse cannot see."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``hwtoolkit train: error: ...``, status 2), like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(low: float, high: float, *, integer: bool = False, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in range, checked by the same helper as the config's numbers."""
    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        try:
            return schema.check_number("", value, low, high, integer=integer, low_open=low_open)
        except schema.SchemaError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(" = ")) from None
    return parse


def writable_file(option: str, path: str | None) -> None:
    """Fail before any work if ``path`` (an output file) cannot be written: a directory, or no such folder."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {path!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{option} {path!r} is not writable")


def _load_config(args: argparse.Namespace) -> config_mod.Config:
    return api.load_config(args.config, args.set or [], target=getattr(args, "target", None))


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None  # None: a progress bar where stderr is a terminal


def _executor(args: argparse.Namespace) -> ExecutorSpec:
    spec = ExecutorSpec(args.executor, args.address, args.cpus_per_point, args.workers, args.retries)
    spec.validate()
    return spec


def _tracking_uri(args: argparse.Namespace) -> str | None:
    """The MLflow store runs are logged to: --tracking-uri, else $HWTOOLKIT_TRACKING_URI, else runs/mlflow.db;
    None with --no-track or HWTOOLKIT_NO_TRACK=1 (what the test suite sets)."""
    from hwtoolkit.tracking import check_uri, default_uri

    if args.no_track:
        if args.tracking_uri is not None:
            raise UsageError("--tracking-uri and --no-track exclude each other")
        return None
    if args.tracking_uri is None and os.environ.get("HWTOOLKIT_NO_TRACK") == "1":
        return None
    return check_uri(args.tracking_uri or os.environ.get("HWTOOLKIT_TRACKING_URI") or default_uri())


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise UsageError("--resume needs --out, the run directory to continue")
    if args.resume and not Path(args.out, "config.toml").is_file():
        raise UsageError(f"--resume: {args.out!r} holds no run to continue (no config.toml); leave out --resume "
                         f"to start one there")
    cfg = _load_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = api.train(cfg, out, resume=args.resume, progress=_progress(args), tracking_uri=_tracking_uri(args))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    api.evaluate(args.run_dir, wait=args.wait)
    return 0


def cmd_gdu(args: argparse.Namespace) -> int:
    from hwtoolkit.plots import plot_gdu

    writable_file("--json", args.json)
    writable_file("--plot", args.plot)
    cfg = _load_config(args)
    estimators = list(GDU_ESTIMATORS) if args.estimator == "both" else [args.estimator]
    results = api.gdu(cfg, beta=args.beta, estimators=estimators, steps=args.steps, free_steps=args.free_steps,
                      batch=args.batch, weights=args.weights, random_input=args.random_input)
    report = {"config": str(args.config), "network": cfg.network.describe(), "batch": args.batch, "results": []}
    for est, result in results.items():
        beta = result.beta
        report["results"].append(result.as_dict())
        print(f"GDU check, {est} EP, beta = {beta:g}, K = {result.steps} steps, free phase "
              f"{args.free_steps or cfg.ep.free_steps} steps (residual {result.free_residual:.1e})")
        if result.free_residual > 1e-3 * beta:
            print(f"  warning: the free phase has not converged: its last step still moved a unit by "
                  f"{result.free_residual:.1e}, not small against beta = {beta:g}. The GDU property assumes a "
                  f"fixed point, and the EP updates carry an error of about residual / beta. Raise --free-steps.")
        print(f"  {'':6} {'rel. error':>11} {'sign disagr.':>13} {'cosine':>9}")
        for name, f in result.fidelity.items():
            print(f"  {name:6} {f.relative_error:11.3e} {f.sign_disagreement:13.4f} {f.cosine:9.5f}")
        for name, a in result.asymmetry.items():
            print(f"  asymmetry ||W - B^T|| / ||W|| of {name}: {a:.4f}")
        plot = Path(args.plot)
        if len(estimators) > 1:
            plot = plot.with_name(f"{plot.stem}_{est}{plot.suffix}")
        plot_gdu(result, plot)
        print(f"  plot: {plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from hwtoolkit.sweep import format_table

    report = api.run_sweep(args.config, args.param, args.values, seeds=args.seeds, overrides=args.set or [],
                           out=args.out, fidelity_batches=args.fidelity_batches, resume=args.resume,
                           progress=_progress(args), executor=_executor(args), tracking_uri=_tracking_uri(args))
    print(format_table(report))
    out = Path(report["out"])
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}, {out / 'sweep.png'} (error bars: {report['error_bars']})")
    if report["failed"]:
        print(f"hwtoolkit sweep: {report['failed']} point(s) failed; they are in sweep.csv with their errors; "
              f"--resume retries them", file=sys.stderr)
        return 1
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from hwtoolkit.tuning.study import format_report

    report = api.tune(args.config, args.search or [], args.trials, overrides=args.set or [], out=args.out,
                      storage=args.storage, pruner=args.pruner, resume=args.resume, executor=_executor(args),
                      tracking_uri=_tracking_uri(args))
    print(format_report(report))
    print(f"wrote {Path(report['out']) / 'tune.json'}")
    return 0 if report["best"] is not None else 1


def cmd_export(args: argparse.Namespace) -> int:
    from quantize.export import ExportCheckError

    writable_file("--out", args.out)
    writable_file("--json", args.json)
    try:
        api.export(args.run_dir, args.format, args.out, steps=args.steps, samples=args.check_samples,
                   check=not args.no_check, report_json=args.json, force=args.force)
    except ExportCheckError as e:
        print(f"hwtoolkit export: check failed: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    for name, description in api.available_targets().items():
        print(f"{name:12} {description}")
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from firmware_interface.client import BoardClient, BoardError, BoardTimeout, ProtocolError

    try:
        with BoardClient.open(args.url, baudrate=args.baudrate, timeout=args.timeout) as client:
            info = client.info
            report = {"url": args.url, "hello": {**asdict(info), "capabilities": [c.name for c in type(
                info.capabilities) if c in info.capabilities]}}
            failed = 0
            if args.self_test:
                passed, failed = client.self_test()
                report["self_test"] = {"passed": f"0x{passed:08x}", "failed": f"0x{failed:08x}"}
            report["status"] = asdict(client.get_status())
    except (ConnectionError, BoardTimeout, BoardError, ProtocolError) as e:
        raise TargetError(f"board at {args.url!r}: {e}") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.url}: {info.describe()}")
        print(f"  capabilities: {', '.join(report['hello']['capabilities']) or 'none'}")
        print(f"  limits: {info.max_layers} layers, {info.max_units} units, {info.max_steps} steps, weights <= "
              f"{info.max_weight_bits} bits, states <= {info.max_state_bits} bits, inputs <= {info.max_input_bits} "
              f"bits, {info.accumulator_bits}-bit accumulator")
        if "self_test" in report:
            print(f"  self-test: passed {report['self_test']['passed']}, failed {report['self_test']['failed']}")
        status = report["status"]
        print(f"  status: up {status['uptime_ms'] / 1000:.1f} s, {status['requests']} requests, "
              f"{status['rx_bad_crc']} bad CRC, {status['rx_dropped']} dropped, {status['replays']} replays")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hwtoolkit", description="Equilibrium Propagation on real and simulated "
                                                                   "hardware.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="experiment TOML file (see configs/)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field by its dotted name, e.g. --set ep.beta=0.2 (repeatable); the "
                            "value is read as TOML, so quote a string that looks like a number: name='\"2024\"'")

    def add_tracking_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow store the finished runs are logged to (default: sqlite:///runs/mlflow.db here; "
                            "a postgresql:// or http(s):// server's URL for a team)")
        p.add_argument("--no-track", action="store_true", help="log nothing to MLflow")

    def add_executor_args(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--executor", choices=KINDS, default="local",
                       help=f"local: {what} one after the other in this process (default); ray: each a Ray task")
        p.add_argument("--address", metavar="HOST:PORT", help="join the Ray cluster whose head is there (or auto); "
                                                              "default: start a local Ray instance for this command")
        p.add_argument("--cpus-per-point", type=number(1, 1024, integer=True), default=1, metavar="N",
                       help="CPUs of each Ray task, and its torch threads (default 1)")
        p.add_argument("--workers", type=number(1, 100_000, integer=True), metavar="N",
                       help="Ray tasks at once (default: as many as the CPUs allow)")
        p.add_argument("--retries", type=number(0, MAX_RETRIES, integer=True), default=2, metavar="N",
                       help=f"further attempts of a {what[:-1]} whose worker died or that raised (default 2); "
                            f"then it is reported as failed")

    p = sub.add_parser("train", help="train a network on a target")
    add_config_args(p)
    p.add_argument("--target", help="target name (overrides target.name; see `hwtoolkit targets`)")
    p.add_argument("--out", help="run directory (default: runs/NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's best weights on its validation and test splits")
    p.add_argument("run_dir")
    p.add_argument("--wait", type=number(0, MAX_WAIT), default=0.0, metavar="SECONDS",
                   help="simulated seconds between programming and reading the weights (drift, decay), on targets "
                        "that model time")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("gdu", help="compare per-step EP updates with BPTT gradients (GDU property)")
    add_config_args(p)
    p.add_argument("--beta", type=number(0, config_mod.MAX_BETA, low_open=True),
                   help="nudging strength (default: the config's ep.beta)")
    p.add_argument("--estimator", choices=[*GDU_ESTIMATORS, "both"], default="both")
    p.add_argument("--steps", type=number(1, config_mod.MAX_STEPS, integer=True),
                   help="K, the steps compared (default: ep.nudged_steps)")
    p.add_argument("--free-steps", type=number(1, config_mod.MAX_STEPS, integer=True),
                   help="free-phase steps (default: ep.free_steps)")
    p.add_argument("--batch", type=number(1, config_mod.MAX_BATCH, integer=True), default=16,
                   help="samples in the batch (default 16)")
    p.add_argument("--weights", help="a checkpoint (run/checkpoints/best.pt) instead of the initial weights")
    p.add_argument("--random-input", action="store_true", help="uniform random inputs instead of the data set")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--plot", default="gdu.png", help="PNG of EP and BPTT curves per layer (default gdu.png)")
    p.set_defaults(func=cmd_gdu)

    p = sub.add_parser("sweep", help="train at several values of one config field and seeds (robustness study)")
    add_config_args(p)
    p.add_argument("--param", required=True, metavar="KEY", help="the dotted config field to sweep, as for --set "
                                                                 "(e.g. ep.beta, optim.lr, target.name)")
    p.add_argument("--values", required=True, metavar="V1,V2,...",
                   help="the values, split on commas outside brackets and quotes, each read as TOML like a --set "
                        "value (a bare word is a string): 0,0.1,0.2 or '\"ideal\",\"reram-exp\"' or "
                        "'[0.1,0.05],[0.2,0.1]'; write --values=-1,0 when the first value starts with '-'")
    p.add_argument("--seeds", type=number(1, 1000, integer=True), default=1, help="runs per value, with seeds seed, seed+1, ... (default 1)")
    p.add_argument("--out", help="sweep directory (default: runs/NAME-sweep-KEY-TIMESTAMP); must be new or empty")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out: finished points are kept, "
                                                         "interrupted ones resume from their last checkpoint")
    p.add_argument("--fidelity-batches", type=number(0, 10_000, integer=True), default=4, metavar="K",
                   help="training batches for the gradient-fidelity cosines of each point (default 4; 0 = none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_args(p, "points")
    add_tracking_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("tune", help="tune config fields on validation accuracy (an Optuna study, resumable)")
    add_config_args(p)
    p.add_argument("--search", action="append", metavar="KEY=SPACE",
                   help="a searched field and its space (repeatable): log(LOW, HIGH), uniform(LOW, HIGH), "
                        "int(LOW, HIGH) or choice(A, B, ...); one layer's learning rate as optim.lr[0]=log(1e-3, 0.3)")
    p.add_argument("--trials", type=number(1, MAX_TRIALS, integer=True), required=True, metavar="N",
                   help="finished (completed or pruned) trials the study ends with, counting those of a resumed study")
    p.add_argument("--out", help="study directory (default: runs/NAME-tune-TIMESTAMP); must be new or empty")
    p.add_argument("--storage", metavar="URL", help="the study's database (default: sqlite:///OUT/study.db; a "
                                                    "postgresql:// or mysql:// URL to share it across machines)")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="stop trailing trials on their per-epoch validation accuracy: median (default), asha, none")
    p.add_argument("--resume", action="store_true", help="continue the study in --out (after Ctrl-C or a kill)")
    add_executor_args(p, "trials")
    add_tracking_args(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="export a run's network: the unrolled free phase as ONNX/QCDQ/QONNX, or its "
                                      "integer weights for a board (fixed); checked against PyTorch")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="onnx: float graph (quantization as round/clip ops); qcdq: QuantizeLinear/Clip/"
                        "DequantizeLinear graph; qonnx: QONNX Quant nodes; fixed: the .epqw integer weight file")
    p.add_argument("--out", required=True, help="the file to write (written only if the check passes; never inside "
                                                "the run's checkpoints)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--steps", type=number(1, config_mod.MAX_STEPS, integer=True),
                   help=f"T, free-phase steps unrolled (default: the run's ep.free_steps; at most "
                        f"{MAX_UNROLLED_STEPS} for the ONNX formats)")
    p.add_argument("--check-samples", type=number(0, config_mod.MAX_SAMPLES, integer=True), default=1000, metavar="N",
                   help="test images the check runs (default 1000; 0 = the whole test split)")
    p.add_argument("--no-check", action="store_true", help="write the file without running the check")
    p.add_argument("--json", metavar="FILE", help="write the check's figures (differences, agreement, accuracy) here")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("targets", help="list the available targets")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("board", help="greet a board on a serial link: its version, limits, self-test and counters")
    p.add_argument("url", help="pyserial URL: /dev/ttyACM0, a pty path, or socket://127.0.0.1:PORT")
    p.add_argument("--baudrate", type=number(50, 50_000_000, integer=True), default=115_200,
                   help="baud rate of a real serial port (default 115200)")
    p.add_argument("--timeout", type=number(0, 3600, low_open=True), default=0.5,
                   help="seconds to wait for a small response (default 0.5)")
    p.add_argument("--self-test", action="store_true", help="run the board's self-tests (exit status 1 if one fails)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=cmd_board)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised so that every ``finally`` and temporary-file cleanup runs before the process ends."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse's usage errors and --help, as a status
        return e.code if isinstance(e.code, int) else 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except (config_mod.ConfigError, DatasetNotFoundError, TargetError, ValueError, RunExistsError, CheckpointError,
            DirectoryLockedError) as e:
        return _fail(args, str(e))
    except OSError as e:  # files and devices: name the path, not a traceback
        where = f"{e.filename!r}: " if e.filename else ""
        return _fail(args, f"{where}{e.strerror or e}")
    except MemoryError:
        return _fail(args, "not enough memory for this network and batch; make them smaller")
    except RuntimeError as e:
        if "alloc" in str(e) or "out of memory" in str(e):  # torch's allocator failing on a huge tensor
            return _fail(args, f"not enough memory for this network and batch ({str(e).splitlines()[0]})")
        raise
    except KeyboardInterrupt:
        print(f"hwtoolkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"hwtoolkit {args.command}: terminated", file=sys.stderr)
        return 143


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"hwtoolkit {args.command}: error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
