"""Robustness studies: train one experiment at several values of one config field, with several seeds.

``hwtoolkit sweep CONFIG --param KEY --values V1,V2,...`` builds one config per
value and seed from the raw TOML exactly like ``--set`` does
(``config.apply_overrides(raw, [*sets, "KEY=V", "seed=S"])`` then
``config.from_dict``), so any dotted field can be swept and every value is
validated by the config module. All points are validated before any is
trained. Each point is an ordinary run directory,
``DIR/points/<KEY>=<VALUE>/seed<S>``, trained by ``training.loop.train``;
after training, the gradient fidelity of the device is measured on its
best-validation weights (``fidelity.json`` next to ``summary.json``).

Values: ``--values`` is split on the commas that are outside brackets
(``[]``, ``{}``) and quotes (``"..."``, ``'...'``); each piece, stripped of
surrounding blanks, is read as a TOML value like a ``--set`` value, and a piece
that is not valid TOML is taken as a bare string. So ``0,0.1,1e-3`` are numbers,
``ideal,reram-exp`` and ``'"ideal","reram-exp"'`` are strings,
``'[0.1,0.05],[0.2,0.1]'`` are two lists and ``'"a,b",c'`` is ``"a,b"`` and
``"c"``. A string that looks like a number needs TOML quotes: ``'"1"'``.

Seeds: the points of a value use seeds ``seed + k`` for ``k`` in
``range(seeds)``, where ``seed`` is the config's seed after the overrides and
the value (so sweeping ``seed`` itself works too).

Gradient fidelity (per point, ``K`` training batches drawn by a generator
seeded from the point seed, each one update further on): with ``w0`` the weights
the device holds,

* ``ideal``: the EP direction of the run's estimator (symmetric for a BPTT run)
  on a float64 reference target programmed with ``w0``;
* ``device_vs_ideal``: cosine of the same estimator's direction on the device
  with ``ideal`` (what the device's relaxations and read-out do to the estimate);
* ``applied_vs_ideal``: the device direction scaled per layer by the layer's
  learning rate is written with ``apply_update`` (as two pulse trains where the
  target's capabilities ask for them, as in training); cosine of the change the device
  really shows (``read_weights() - w0``) with the learning-rate-scaled ``ideal``
  (what the write path adds on top);
* ``ideal_vs_bptt``: cosine of ``ideal`` with the negative BPTT gradient through
  ``ep.free_steps`` free steps from ``w0`` (how well EP itself estimates the
  gradient at these settings, independent of the device).

Cosines are over all parameters concatenated and averaged over the ``K``
batches; a zero vector has cosine 0 with a non-zero one and 1 with another zero
vector. On the exact reference target ``device_vs_ideal`` and
``applied_vs_ideal`` are 1 up to float32 rounding.

Outputs: ``DIR/sweep.csv`` and ``DIR/sweep.json`` (one row per point; the JSON
adds the mean, sample standard deviation, min and max of the test accuracy over
the seeds of each value, and the same of each cosine), rewritten atomically
after every point, and ``DIR/sweep.png`` at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm import tqdm

import targets
from hwtoolkit import config as config_mod
from hwtoolkit.config import Config, ConfigError
from hwtoolkit.data.batches import derive_seed
from hwtoolkit.network.bptt import bptt_grads
from hwtoolkit.training import checkpoint, loop
from hwtoolkit.training.estimators import make_estimator
from hwtoolkit.training.rundir import RunDir, write_text_atomic

COSINES = ("applied_vs_ideal", "ideal_vs_bptt", "device_vs_ideal")
COLUMNS = ("key", "value", "seed", "test_accuracy", "val_accuracy", "train_seconds", *COSINES, "test_loss", "point")
FIDELITY_FILE = "fidelity.json"
ERROR_BARS = "min-max over seeds"


class SweepError(ValueError):
    """A sweep cannot be run as asked (bad values, output directory in use, ...)."""


@dataclass(frozen=True)
class SweepValue:
    """One value of the swept field: the text as given, the value it parses to, and its label."""

    text: str
    value: Any
    label: str


@dataclass(frozen=True)
class Point:
    """One training run of the sweep."""

    value: SweepValue
    seed: int
    cfg: Config
    dir: Path


# ----------------------------------------------------------------------------------------------- values


def split_values(text: str) -> list[str]:
    """Split ``text`` on the commas outside brackets and quotes; every piece stripped and non-empty."""
    pieces: list[str] = []
    current: list[str] = []
    closing = {"[": "]", "{": "}"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote is not None:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch == "," and not stack:
            pieces.append("".join(current))
            current = []
            continue
        current.append(ch)
        if ch in "\"'":
            quote = ch
        elif ch in closing:
            stack.append(closing[ch])
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                raise SweepError(f"--values {text!r}: unbalanced {ch!r}")
    if quote is not None:
        raise SweepError(f"--values {text!r}: unterminated {quote} quote")
    if stack:
        raise SweepError(f"--values {text!r}: unclosed bracket, expected {stack[-1]!r}")
    pieces.append("".join(current))
    pieces = [p.strip() for p in pieces]
    if any(not p for p in pieces):
        raise SweepError(f"--values {text!r}: empty value (two commas in a row, or a leading or trailing comma)")
    return pieces


def value_label(value: Any) -> str:
    """A short text for a parsed value: bare for a top-level string, TOML-like otherwise."""
    if isinstance(value, str):
        return value
    return _inner_label(value)


def _inner_label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_inner_label(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_inner_label(v)}" for k, v in value.items()) + "}"
    return str(value)  # dates and times from TOML


def parse_values(key: str, text: str) -> list[SweepValue]:
    """``--values`` text -> the values, each read as TOML like a ``--set`` value (see the module docstring)."""
    values = []
    for piece in split_values(text):
        _, value = config_mod.parse_override(f"{key}={piece}")
        values.append(SweepValue(piece, value, value_label(value)))
    return values


_SAFE = re.compile(r"[^A-Za-z0-9._=+,-]")


def point_dirname(key: str, label: str) -> str:
    """``KEY=LABEL`` as a file name: other characters become ``_``, and then a hash of the label keeps it unique."""
    name = f"{key}={label}"
    safe = _SAFE.sub("_", name)
    if safe != name or len(safe) > 100:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def is_numeric(values: Sequence[Any]) -> bool:
    """Whether the values go on a numeric axis (numbers, not booleans); otherwise they are categories."""
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


# ----------------------------------------------------------------------------------------------- points


def point_config(raw: dict[str, Any], sets: Sequence[str], key: str, value: SweepValue,
                 seed: int | None = None) -> Config:
    """The validated config of one point; an invalid value raises a ``ConfigError`` naming it."""
    overrides = [*sets, f"{key}={value.text}"]
    if seed is not None:
        overrides.append(f"seed={seed}")
    try:
        return config_mod.from_dict(config_mod.apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"--param {key} value {value.text}: {e}") from None


def build_points(raw: dict[str, Any], key: str, values: Sequence[SweepValue], seeds: int, sets: Sequence[str],
                 out: Path) -> list[Point]:
    """Every point's validated config and run directory, values first, then seeds."""
    if seeds < 1:
        raise SweepError(f"--seeds {seeds}: expected an integer >= 1")
    if not values:
        raise SweepError("--values: no values given")
    names: dict[str, SweepValue] = {}
    points = []
    for value in values:
        name = point_dirname(key, value.label)
        if name in names:
            raise SweepError(f"--values: {names[name].text} and {value.text} are the same point ({name})")
        names[name] = value
        base = point_config(raw, sets, key, value).seed
        for k in range(seeds):
            cfg = point_config(raw, sets, key, value, base + k)
            points.append(Point(value, cfg.seed, cfg, out / "points" / name / f"seed{cfg.seed}"))
    return points


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse an output directory that holds anything unless the sweep is resumed."""
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {str(out)!r} is a file, not a directory")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise SweepError(f"--out {str(out)!r} already exists and is not empty; pass --resume to continue the "
                         f"sweep there (finished points are kept) or choose another --out")


def check_finished_points(points: Sequence[Point]) -> None:
    """On ``--resume``: a finished point must have been trained with the config it would get now."""
    for p in points:
        run = RunDir(p.dir)
        if run.summary.exists() and run.config.exists():
            stored = config_mod.loads(run.config.read_text())
            if stored.to_dict() != p.cfg.to_dict():
                raise SweepError(f"--resume: {str(p.dir)!r} was trained with a different config than this sweep "
                                 f"gives it (other --set options or config file?); choose another --out")


def check_targets(points: Sequence[Point], key: str) -> None:
    """Open (and close) the target of every value once, so a bad target option fails before any training."""
    seen: set[str] = set()
    for p in points:
        if p.value.label in seen:
            continue
        seen.add(p.value.label)
        try:
            with loop.open_target(p.cfg):
                pass
        except targets.TargetError as e:
            raise targets.TargetError(f"--param {key} value {p.value.text}: {e}") from None


# --------------------------------------------------------------------------------------------- fidelity


def cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Cosine of two parameter dicts, all parameters concatenated (a missing parameter counts as zeros)."""
    names = sorted(set(a) | set(b))
    va = torch.cat([(a[n] if n in a else torch.zeros_like(b[n])).detach().cpu().double().flatten() for n in names])
    vb = torch.cat([(b[n] if n in b else torch.zeros_like(a[n])).detach().cpu().double().flatten() for n in names])
    na, nb = va.norm().item(), vb.norm().item()
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(torch.dot(va, vb).item() / (na * nb))


def _host(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().cpu().double() for n, t in d.items()}


def measure_fidelity(cfg: Config, target: targets.Target, splits: loop.Splits, seed: int, batches: int) -> dict:
    """Gradient fidelity of ``target`` over ``batches`` training batches (see the module docstring).

    The target's weights move by one learning-rate-scaled update per batch.
    """
    spec = cfg.network
    estimator_name = cfg.estimator if cfg.estimator != "bptt" else "symmetric"
    estimator = make_estimator(estimator_name, cfg.ep)
    # a target that writes an update as two pulse trains (capabilities.update_trains) gets them, like in training
    trains = bool(getattr(target.capabilities, "update_trains", False))
    device_estimator = make_estimator(estimator_name, cfg.ep, True) if trains else estimator
    layer_of = spec.parameter_layers()
    lrs = cfg.layer_lrs()
    n = splits.train_x.shape[0]
    if n == 0:
        raise SweepError("the training split is empty: no batches to measure gradient fidelity on")
    gen = torch.Generator().manual_seed(derive_seed(seed))
    per_batch = []
    with targets.open("reference", spec, dtype="float64") as reference:
        for _ in range(batches):
            idx = torch.randperm(n, generator=gen)[:cfg.train.batch_size]
            sign_seed = int(torch.randint(0, 2 ** 62, (), generator=gen))  # the same random sign on both targets
            x = splits.train_x[idx].float().div_(255.0)
            y = splits.train_y[idx]
            w0 = target.read_weights()
            reference.program(w0)
            ideal = _host(estimator(reference, x, y, torch.Generator().manual_seed(sign_seed)).direction)
            grads, _ = bptt_grads(spec, {k: t.double() for k, t in w0.items()}, x.double(), y, cfg.ep.free_steps)
            estimate = device_estimator(target, x, y, torch.Generator().manual_seed(sign_seed))
            device = estimate.direction
            scaled = {k: lrs[layer_of[k]] * d for k, d in device.items()}
            if trains:  # written as the training loop writes it: the two phase terms as two pulse trains
                parts = tuple({k: lrs[layer_of[k]] * t for k, t in part.items()} for part in estimate.parts)
                report = target.apply_update(scaled, parts)
            else:
                report = target.apply_update(scaled)
            after = target.read_weights()
            applied = {k: after[k].double() - w0[k].double() for k in after}
            scaled_ideal = {k: lrs[layer_of[k]] * d for k, d in ideal.items()}
            per_batch.append({
                "applied_vs_ideal": cosine(applied, scaled_ideal),
                "ideal_vs_bptt": cosine(ideal, {k: -g for k, g in grads.items()}),
                "device_vs_ideal": cosine(_host(device), ideal),
                "saturated": int(getattr(report, "saturated", 0) or 0),
            })
    summary: dict[str, Any] = {"batches": batches, "estimator": estimator_name, "seed": seed}
    for c in COSINES:
        summary[c] = statistics.fmean(b[c] for b in per_batch) if per_batch else None
    summary["saturated"] = sum(b["saturated"] for b in per_batch)
    summary["per_batch"] = per_batch
    return summary


def point_fidelity(cfg: Config, run_dir: Path, batches: int) -> dict:
    """Fidelity of a trained point, measured on a freshly opened target holding its best-validation weights."""
    run = RunDir(run_dir)
    weights = checkpoint.load(run.best_checkpoint)["weights"]
    splits = loop.load_splits(cfg)
    with loop.open_target(cfg) as target:
        target.program(weights)
        return measure_fidelity(cfg, target, splits, cfg.seed, batches)


# ------------------------------------------------------------------------------------------ one point


def run_point(point: Point, key: str, fidelity_batches: int, resume: bool, out: Path,
              log: Callable[[str], None]) -> dict:
    """Train one point (unless it is finished), measure its fidelity (unless stored), and return its row."""
    run = RunDir(point.dir)
    trained = not run.summary.exists()
    if trained:
        summary = loop.train(point.cfg, point.dir, resume=resume, progress=False, log=log)
    else:
        summary = json.loads(run.summary.read_text())
        log(f"finished earlier, kept: {point.dir}")
    fidelity: dict | None = None
    fidelity_path = point.dir / FIDELITY_FILE
    if fidelity_batches > 0:
        if fidelity_path.exists() and not trained:
            stored = json.loads(fidelity_path.read_text())
            fidelity = stored if stored.get("batches") == fidelity_batches else None
        if fidelity is None:
            fidelity = point_fidelity(point.cfg, point.dir, fidelity_batches)
            write_text_atomic(fidelity_path, json.dumps(_json_safe(fidelity), indent=2) + "\n")
    row: dict[str, Any] = {
        "key": key, "value": point.value.value, "label": point.value.label, "seed": point.seed,
        "test_accuracy": summary["test_accuracy"], "val_accuracy": summary.get("val_accuracy"),
        "train_seconds": summary.get("train_seconds"), "test_loss": summary.get("test_loss"),
    }
    for c in COSINES:
        row[c] = fidelity[c] if fidelity else None
    row["point"] = str(point.dir.relative_to(out)) if point.dir.is_relative_to(out) else str(point.dir)
    return row


# --------------------------------------------------------------------------------------- aggregate, write


def _stats(xs: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def aggregate(rows: Sequence[dict], values: Sequence[SweepValue]) -> list[dict]:
    """Per value (in the order given): mean, sample std, min and max over seeds of the test accuracy and cosines."""
    result = []
    for v in values:
        group = [r for r in rows if r["label"] == v.label]
        if not group:
            continue
        entry: dict[str, Any] = {"value": v.value, "label": v.label, "seeds": len(group),
                                 "test_accuracy": _stats([r["test_accuracy"] for r in group])}
        for c in COSINES:
            xs = [r[c] for r in group if r[c] is not None]
            entry[c] = _stats(xs) if xs else None
        result.append(entry)
    return result


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def rows_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV; the value column holds the value's label (bare strings, TOML-like lists)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_csv_cell(r["label"] if c == "value" else r[c]) for c in COLUMNS])
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null: sweep.json stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(out: Path, report: dict, plot: bool = True) -> None:
    """``sweep.json`` and ``sweep.csv`` (atomically), and ``sweep.png`` when ``plot``."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False, default=str)  # default: TOML dates
    write_text_atomic(out / "sweep.json", text + "\n")
    write_text_atomic(out / "sweep.csv", rows_csv(report["rows"]))
    if plot and report["aggregate"]:
        from hwtoolkit.plots import plot_sweep

        plot_sweep(report, out / "sweep.png")


def format_table(report: dict) -> str:
    """A plain-text table of the aggregate: one line per value (accuracy in %, bars min-max over seeds)."""
    key = report["key"]
    width = max([len(key), *(len(a["label"]) for a in report["aggregate"])])
    lines = [f"{key:<{width}}  {'seeds':>5}  {'test acc. (%): mean ± std [min, max]':<36}  "
             f"{'applied/ideal':>13}  {'ideal/BPTT':>10}  {'device/ideal':>12}"]
    for a in report["aggregate"]:
        acc = a["test_accuracy"]
        cell = (f"{100 * acc['mean']:6.2f} ± {100 * acc['std']:5.2f} "
                f"[{100 * acc['min']:6.2f}, {100 * acc['max']:6.2f}]")
        cos = ["-" if a[c] is None else f"{a[c]['mean']:.4f}" for c in COSINES]
        lines.append(f"{a['label']:<{width}}  {a['seeds']:>5}  {cell:<36}  {cos[0]:>13}  {cos[1]:>10}  {cos[2]:>12}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- sweep


def default_out(raw: dict[str, Any], key: str) -> Path:
    name = raw.get("name") if isinstance(raw.get("name"), str) else "experiment"
    return Path("runs") / f"{name}-sweep-{_SAFE.sub('_', key)}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_sweep(config_path: str | Path, key: str, values_text: str, seeds: int = 1, sets: Sequence[str] = (),
              out: str | Path | None = None, fidelity_batches: int = 4, resume: bool = False,
              progress: bool | None = None, log: Callable[[str], None] = print) -> dict:
    """Validate every point, then train them one after the other; return the report written to ``sweep.json``."""
    key = key.strip()
    if not key:
        raise SweepError("--param: expected a dotted config key, e.g. ep.beta")
    if fidelity_batches < 0:
        raise SweepError(f"--fidelity-batches {fidelity_batches}: expected an integer >= 0 (0 = no fidelity)")
    sets = list(sets)
    values = parse_values(key, values_text)
    raw = config_mod.read_raw(config_path)
    out = Path(out) if out else default_out(raw, key)
    points = build_points(raw, key, values, seeds, sets, out)
    check_out_dir(out, resume)
    if resume:
        check_finished_points(points)
    check_targets(points, key)

    report: dict[str, Any] = {
        "key": key, "config": str(config_path), "sets": sets, "values": [v.value for v in values],
        "labels": [v.label for v in values], "numeric": is_numeric([v.value for v in values]), "seeds": seeds,
        "fidelity_batches": fidelity_batches, "error_bars": ERROR_BARS, "out": str(out), "rows": [],
        "aggregate": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(points, desc=f"sweep {key}", unit="run", disable=not show)
    write = tqdm.write if show else log
    try:
        for point in bar:
            name = f"{key}={point.value.label} seed {point.seed}"
            bar.set_postfix_str(name)
            row = run_point(point, key, fidelity_batches, resume, out, lambda m, name=name: write(f"[{name}] {m}"))
            report["rows"].append(row)
            report["aggregate"] = aggregate(report["rows"], values)
            write_outputs(out, report, plot=False)
    finally:
        bar.close()
    write_outputs(out, report, plot=True)
    return report
