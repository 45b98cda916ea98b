"""Export a trained run: the free phase unrolled over T steps (ONNX, QCDQ, QONNX) or its integer weights.

Every export checks itself before it is kept: the file is written next to ``out``, run on a sample (onnxruntime
for ONNX and QCDQ, qonnx's executor for QONNX, the fixed-point model re-read from the file for ``fixed``),
compared with PyTorch (the reference target relaxing the same inputs with the same weights), and moved into place only if it agrees
within tolerance. A failed check raises ``ExportCheckError`` and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwtoolkit.config import MAX_STEPS, Config
from hwtoolkit.files import write_text_atomic

FORMATS = ("onnx", "qcdq", "qonnx", "fixed")
INPUT_NAME, OUTPUT_NAME = "images", "scores"
OPSET = 17
MAX_UNROLLED_STEPS = 2000  # free-phase steps unrolled into an ONNX graph: each adds its nodes to the graph


class ExportError(ValueError):
    """The run cannot be exported in the asked format."""


class ExportCheckError(RuntimeError):
    """The exported model disagrees with PyTorch beyond tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """What an export must meet on the check sample."""

    max_abs: float | None  # largest |score difference| allowed (None: not checked)
    agreement: float  # smallest fraction of identical predicted classes
    state_lsb: int | None = None  # fixed point: largest state difference, in LSBs


TOLERANCES = {
    "onnx": Tolerance(max_abs=1e-5, agreement=1.0),
    "qcdq": Tolerance(max_abs=None, agreement=0.999),
    "qonnx": Tolerance(max_abs=None, agreement=0.999),
    "fixed": Tolerance(max_abs=None, agreement=0.999, state_lsb=1),
}


@dataclass
class CheckReport:
    """How the exported model compared with PyTorch on the sample."""

    format: str
    samples: int
    max_abs_diff: float
    agreement: float
    max_state_lsb: int | None
    tolerance: Tolerance
    passed: bool
    accuracy_pytorch: float | None = None  # on the sample's labels, when given
    accuracy_export: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        states = f", states within {self.max_state_lsb} LSB" if self.max_state_lsb is not None else ""
        accuracy = (f", accuracy {100 * self.accuracy_export:.2f}% (PyTorch {100 * self.accuracy_pytorch:.2f}%)"
                    if self.accuracy_export is not None else "")
        verdict = "passed" if self.passed else "FAILED"
        return (f"{self.format} check on {self.samples} samples: largest score difference {self.max_abs_diff:.3g}, "
                f"class agreement {100 * self.agreement:.3f}%{states}{accuracy}: {verdict}")


def metadata(cfg: Config, steps: int, fmt: str) -> dict[str, str]:
    """What the ONNX file records about the network it computes."""
    from .fixed_point import spec_to_dict

    q = cfg.quant
    return {
        "hwtoolkit.format": fmt, "hwtoolkit.steps": str(steps), "hwtoolkit.activation": cfg.network.activation,
        "hwtoolkit.dynamics": cfg.network.dynamics, "hwtoolkit.update": cfg.network.update,
        "hwtoolkit.weight_bits": str(q.weight_bits), "hwtoolkit.state_bits": str(q.state_bits),
        "hwtoolkit.input_bits": str(q.input_bits if q.enabled else 0), "hwtoolkit.scale": q.scale if q.enabled else "",
        "hwtoolkit.granularity": q.granularity if q.enabled else "", "hwtoolkit.spec": json.dumps(spec_to_dict(cfg.network)),
        "hwtoolkit.network": cfg.network.describe(), "hwtoolkit.input": "float32 NCHW images scaled to [0, 1]",
        "hwtoolkit.output": "class scores (argmax = prediction)",
    }


def _export_onnx(module: torch.nn.Module, fmt: str, sample: torch.Tensor, path: Path) -> None:
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (tracer and deprecation warnings)
        if fmt == "onnx":
            torch.onnx.export(module, (sample,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        elif fmt == "qcdq":
            from brevitas.export import export_onnx_qcdq

            # Brevitas's dynamo path refuses quantized biases; the TorchScript exporter handles them
            export_onnx_qcdq(module, args=sample, export_path=str(path), input_names=[INPUT_NAME],
                             output_names=[OUTPUT_NAME], dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        else:
            from brevitas.export import export_qonnx

            export_qonnx(module, args=sample, export_path=str(path), input_names=[INPUT_NAME],
                         output_names=[OUTPUT_NAME], dynamo=False)


def _add_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def _onnxruntime_scores(path: Path, x: torch.Tensor, batch: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + batch].numpy()})[0]
                           for i in range(0, x.shape[0], batch)])


def _qonnx_scores(path: Path, x: torch.Tensor) -> np.ndarray:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(path)))
    name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {name_in: x[i:i + 1].numpy()})[name_out] for i in range(x.shape[0])])


def reference_target(cfg: Config):
    """The PyTorch network the export must match: the reference target (quantized as the run is), whatever
    device trained the weights: an export deploys the weights, not the device that learned them. A run on
    the reference target itself keeps its options (device, dtype, how phases are computed)."""
    import targets

    cls = targets.get("reference")
    options = cfg.target.options if targets.get(cfg.target.name) is cls else {}
    return cls(cfg.network, cls.build_options(options, cfg.run_context()))


def reference_scores(target, x: torch.Tensor, steps: int, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Class scores and states of ``target`` after ``steps`` free steps from zero, in batches of ``batch``."""
    scores, states = [], []
    for i in range(0, x.shape[0], batch):
        r = target.relax(x[i:i + batch], steps)
        scores.append(r.logits.detach().cpu().float())
        states.append([s.detach().cpu().flatten(1) for s in r.states])
    return torch.cat(scores), [torch.cat(layer) for layer in zip(*states)]


def export(cfg: Config, weights: dict[str, torch.Tensor], fmt: str, out: str | Path, sample: torch.Tensor,
           steps: int | None = None, check: bool = True, batch: int = 1000, labels: torch.Tensor | None = None,
           log: Callable[[str], None] = print) -> CheckReport | None:
    """Export the network of ``cfg`` with ``weights`` as ``fmt`` into ``out``, checked on ``sample`` (images).

    With ``labels`` the report also gives the test accuracy of PyTorch and of the export on the sample.
    """
    from hwtoolkit.files import atomic_path

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not known; valid: {list(FORMATS)}")
    steps = cfg.ep.free_steps if steps is None else steps
    limit = MAX_STEPS if fmt == "fixed" else MAX_UNROLLED_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
        raise ExportError(f"--steps {steps} is invalid: expected 1 to {limit} free-phase steps for --format {fmt}")
    if fmt in ("qcdq", "qonnx") and not cfg.quant.enabled:
        raise ExportError(f"--format {fmt} needs a quantized run (quant.weight_bits or quant.state_bits > 0); "
                          f"export this float run with --format onnx")
    if fmt == "fixed" and not cfg.quant.fixed_point:
        raise ExportError(f"--format fixed needs quantized weights and states with power-of-two scales "
                          f"(quant.scale = \"pow2\"); this run is {cfg.quant.describe()}")
    if sample.dim() != 4 or tuple(sample.shape[1:]) != tuple(cfg.network.input_shape):
        raise ExportError(f"the check sample has shape {tuple(sample.shape)}, expected (N, "
                          f"{', '.join(map(str, cfg.network.input_shape))})")
    out = Path(out)
    with reference_target(cfg) as target:
        target.program(weights)
        with atomic_path(out) as tmp:
            if fmt == "fixed":
                report = _export_fixed(cfg, target, tmp, sample, steps, batch, check, labels)
            else:
                report = _export_graph(cfg, weights, target, fmt, tmp, sample, steps, batch, check, labels)
            if report is not None:
                log(report.line())
                if not report.passed:
                    raise ExportCheckError(f"{report.line()}; tolerance {report.tolerance}. Nothing was written "
                                           f"to {str(out)!r} (use --no-check to keep an unchecked export)")
    return report


def check_output(out: Path, checkpoints: Path, force: bool) -> None:
    """An ``ExportError`` unless ``out`` is a new file outside ``checkpoints`` (or ``force`` lets it replace one)."""
    if out.resolve().parent == checkpoints.resolve() or checkpoints.resolve() in out.resolve().parents:
        raise ExportError(f"--out {str(out)!r} is inside the run's checkpoints ({str(checkpoints)!r}); an export "
                          f"never replaces a run's files: choose another path")
    if out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a directory; give a file name")
    if out.exists() and not force:
        raise ExportError(f"--out {str(out)!r} exists; pass --force to overwrite it")


def _module(cfg: Config, weights: dict[str, torch.Tensor], fmt: str, steps: int) -> torch.nn.Module:
    """The unrolled free phase in float32 on the CPU, built afresh from the weights (the target is left alone)."""
    from .network import QuantEPNetwork
    from .unrolled import BrevitasFreePhase, FloatFreePhase

    weights = {n: t.detach().float().cpu() for n, t in weights.items()}
    if not cfg.quant.enabled:
        return FloatFreePhase(cfg.network, weights, steps).eval()
    net = QuantEPNetwork(cfg.network, cfg.quant)
    net.load_shadow(weights)
    if fmt == "onnx":
        return FloatFreePhase(cfg.network, net.effective_params(), steps, net).eval()
    return BrevitasFreePhase(net, steps).eval()


def _export_graph(cfg: Config, weights: dict[str, torch.Tensor], target, fmt: str, path: Path, sample: torch.Tensor,
                  steps: int, batch: int, check: bool, labels: torch.Tensor | None) -> CheckReport | None:
    module = _module(cfg, weights, fmt, steps)
    _export_onnx(module, fmt, sample[:1].float(), path)
    _add_metadata(path, metadata(cfg, steps, fmt))
    if not check:
        return None
    x = sample.float()
    expected, _ = reference_scores(target, x, steps, batch)
    got = torch.from_numpy(_qonnx_scores(path, x) if fmt == "qonnx" else _onnxruntime_scores(path, x, batch))
    return _compare(fmt, expected, got, None, labels)


def _compare(fmt: str, expected: torch.Tensor, got: torch.Tensor, state_lsb: int | None,
             labels: torch.Tensor | None) -> CheckReport:
    tol = TOLERANCES[fmt]
    diff = float((expected.double() - got.double()).abs().max())
    agreement = float((expected.argmax(1) == got.argmax(1)).double().mean())
    passed = agreement >= tol.agreement and (tol.max_abs is None or diff <= tol.max_abs) and \
        (tol.state_lsb is None or (state_lsb is not None and state_lsb <= tol.state_lsb))
    report = CheckReport(fmt, int(expected.shape[0]), diff, agreement, state_lsb, tol, passed)
    if labels is not None:
        report.accuracy_pytorch = float((expected.argmax(1) == labels).double().mean())
        report.accuracy_export = float((got.argmax(1) == labels).double().mean())
    return report


def _export_fixed(cfg: Config, target, path: Path, sample: torch.Tensor, steps: int, batch: int,
                  check: bool, labels: torch.Tensor | None) -> CheckReport | None:
    from .fixed_point import FixedPointNetwork

    fixed = FixedPointNetwork.from_quant(target.quant)
    fixed.save(path, {"steps": steps, "quant": dataclasses.asdict(cfg.quant)})
    if not check:
        return None
    loaded = FixedPointNetwork.load(path)
    x = sample.float()
    expected, states = reference_scores(target, x, steps, batch)
    result = loaded.relax(loaded.encode_input(x), steps)
    lsb = 2.0 ** loaded.state_frac
    worst = max(int((s.double() * lsb - f.double()).abs().max()) for s, f in zip(states, result.states))
    scores = result.scores.double() * 2.0 ** -loaded.score_frac
    return _compare("fixed", expected, scores, worst, labels)


def export_run(run_dir: str | Path, fmt: str, out: str | Path, steps: int | None = None, samples: int = 1000,
               check: bool = True, report_json: str | Path | None = None, force: bool = False,
               log: Callable[[str], None] = print) -> CheckReport | None:
    """Export a run's best weights; the check sample is the first ``samples`` images of its test split (0 = all).

    The run is never written to: ``out`` may not lie in its checkpoints, and an existing ``out`` is replaced
    only with ``force``.
    """
    from hwtoolkit.runs import load_splits, read_run

    if samples < 0:
        raise ExportError(f"--check-samples {samples} is invalid: expected >= 0 (0 = the whole test split)")
    run = read_run(run_dir)
    check_output(Path(out), run.dir.best_checkpoint.parent, force)
    cfg, weights = run.config, run.best_weights()
    splits = load_splits(cfg)
    n = splits.test_x.shape[0] if samples == 0 else min(samples, splits.test_x.shape[0])
    sample = splits.test_x[:n].float().div_(255.0)
    if fmt == "qonnx" and n > 200:
        log(f"qonnx's executor runs one image at a time; checking {n} images takes a while")
    report = export(cfg, weights, fmt, out, sample, steps, check, cfg.train.eval_batch_size, splits.test_y[:n], log)
    if report_json is not None and report is not None:
        record = {"run": str(run.root), "out": str(out), "steps": steps or cfg.ep.free_steps,
                  "quant": cfg.quant.describe(), **report.as_dict()}
        write_text_atomic(report_json, json.dumps(record, indent=2) + "\n")
    return report
