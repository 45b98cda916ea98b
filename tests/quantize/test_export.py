"""Export round trips with the real runtimes: onnxruntime for ONNX and QCDQ, qonnx's executor for QONNX."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import tiny_config_text
from hwtoolkit import config
from hwtoolkit.cli import main
from hwtoolkit.network.parameters import init_parameters
from quantize import export as export_mod
from quantize.export import ExportCheckError, ExportError, Tolerance, export
from quantize.fixed_point import spec_from_dict

NETWORKS = {
    "mlp": "[network]\ninput_shape = [1, 8, 8]\nhidden = [16, 12]\nclasses = 4\noutput = \"ce\"\n",
    "conv-alternating": ("[network]\ninput_shape = [1, 8, 8]\nhidden = [12]\nclasses = 4\noutput = \"mse\"\n"
                         "update = \"alternating\"\n[[network.conv]]\nchannels = 3\nkernel = 3\npool = \"max\"\n"),
    "two-conv-synchronous": ("[network]\ninput_shape = [1, 8, 8]\nhidden = [10]\nclasses = 4\n"
                             "[[network.conv]]\nchannels = 3\nkernel = 3\npool = \"max\"\n"
                             "[[network.conv]]\nchannels = 4\nkernel = 2\npool = \"max\"\n"),
    "normalised-untied": ("[network]\ninput_shape = [1, 8, 8]\nhidden = [12]\nclasses = 4\ntied = false\n"
                          "input_mean = [0.4]\ninput_std = [0.3]\n"),
}


def make_config(idx_dataset, network: str, quant: str = "") -> config.Config:
    text = tiny_config_text(idx_dataset).replace(
        "[network]\ninput_shape = [1, 8, 8]\nhidden = [16]\nclasses = 4\noutput = \"ce\"\n", NETWORKS[network])
    return config.loads(text.replace("lr = [0.1, 0.05]", "lr = 0.1") + quant)


def weights(cfg):
    return {n: 2.0 * t for n, t in init_parameters(cfg.network, 5).items()}  # large enough to use the formats


def sample(n=64):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def ort_scores(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


def relaxed_scores(cfg, w, x, steps):
    from hwtoolkit.runs import open_target

    with open_target(cfg) as t:
        t.program(w)
        return t.relax(x, steps).logits.numpy()


@pytest.mark.parametrize("network", list(NETWORKS))
def test_float_onnx_matches_pytorch(idx_dataset, tmp_path, network):
    cfg = make_config(idx_dataset, network)
    w, x = weights(cfg), sample()
    out = tmp_path / "net.onnx"
    report = export(cfg, w, "onnx", out, x, steps=7, log=lambda m: None)
    assert report.passed and report.max_abs_diff <= 1e-5 and report.agreement == 1.0
    got, expected = ort_scores(out, x), relaxed_scores(cfg, w, x, 7)
    assert np.abs(got - expected).max() <= 1e-5
    assert got.shape == (64, 4)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["hwtoolkit.steps"] == "7" and meta["hwtoolkit.activation"] == cfg.network.activation
    assert spec_from_dict(json.loads(meta["hwtoolkit.spec"])) == cfg.network
    assert meta["hwtoolkit.weight_bits"] == "0"


QUANT = "[quant]\nweight_bits = 4\nstate_bits = 4\n"


@pytest.mark.parametrize("network", list(NETWORKS))
def test_qcdq_runs_in_onnxruntime_and_matches_the_quantized_network(idx_dataset, tmp_path, network):
    cfg = make_config(idx_dataset, network, QUANT + "granularity = \"per_channel\"\n")
    w, x = weights(cfg), sample()
    out = tmp_path / "net.qcdq.onnx"
    report = export(cfg, w, "qcdq", out, x, steps=6, log=lambda m: None)
    assert report.passed
    got, expected = ort_scores(out, x), relaxed_scores(cfg, w, x, 6)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
    assert np.abs(got - expected).max() < 1e-4
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert int_weights  # weights travel as int8 with their scales
    meta = {p.key: p.value for p in model.metadata_props}
    assert (meta["hwtoolkit.weight_bits"], meta["hwtoolkit.state_bits"], meta["hwtoolkit.format"]) == ("4", "4", "qcdq")


def test_qonnx_runs_in_the_qonnx_executor(idx_dataset, tmp_path):
    cfg = make_config(idx_dataset, "mlp", QUANT)
    w, x = weights(cfg), sample(8)
    out = tmp_path / "net.qonnx.onnx"
    report = export(cfg, w, "qonnx", out, x, steps=5, log=lambda m: None)
    assert report.passed and report.samples == 8
    assert "Quant" in {n.op_type for n in onnx.load(str(out)).graph.node}
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(out)))
    got = execute_onnx(model, {model.graph.input[0].name: x[:1].numpy()})[model.graph.output[0].name]
    assert np.abs(got - relaxed_scores(cfg, w, x[:1], 5)).max() < 1e-4


def test_quantized_float_onnx_is_the_fake_quantized_network(idx_dataset, tmp_path):
    cfg = make_config(idx_dataset, "mlp", QUANT)
    w, x = weights(cfg), sample()
    out = tmp_path / "q.onnx"
    assert export(cfg, w, "onnx", out, x, steps=6, log=lambda m: None).passed
    assert "Round" in {n.op_type for n in onnx.load(str(out)).graph.node}
    assert np.abs(ort_scores(out, x) - relaxed_scores(cfg, w, x, 6)).max() <= 1e-5


@pytest.mark.parametrize("network", ["mlp", "conv-alternating", "two-conv-synchronous"])
def test_fixed_export_writes_a_checked_weight_file(idx_dataset, tmp_path, network):
    cfg = make_config(idx_dataset, network, QUANT)
    out = tmp_path / "net.epqw"
    report = export(cfg, weights(cfg), "fixed", out, sample(), steps=6, log=lambda m: None)
    assert report.passed and report.max_state_lsb is not None and report.max_state_lsb <= 1
    assert out.read_bytes()[:4] == b"EPQW"


def test_a_failed_check_writes_nothing(idx_dataset, tmp_path, monkeypatch):
    cfg = make_config(idx_dataset, "mlp")
    cfg.target.options["dtype"] = "float64"  # PyTorch in float64 against onnxruntime in float32: not bit-equal
    monkeypatch.setitem(export_mod.TOLERANCES, "onnx", Tolerance(max_abs=1e-12, agreement=1.0))
    out = tmp_path / "net.onnx"
    with pytest.raises(ExportCheckError, match="Nothing was written"):
        export(cfg, weights(cfg), "onnx", out, sample(), steps=6, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt, quant, message", [
    ("qcdq", "", "needs a quantized run"),
    ("qonnx", "", "needs a quantized run"),
    ("fixed", QUANT + "scale = \"float\"\n", "power-of-two scales"),
])
def test_formats_a_run_cannot_have_are_refused(idx_dataset, tmp_path, fmt, quant, message):
    cfg = make_config(idx_dataset, "mlp", quant)
    with pytest.raises(ExportError, match=message):
        export(cfg, weights(cfg), fmt, tmp_path / "x", sample(), log=lambda m: None)
    with pytest.raises(ExportError, match="--steps 0"):
        export(cfg, weights(cfg), "onnx", tmp_path / "x", sample(), steps=0, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_a_trained_quantized_run_in_every_format(idx_dataset, tmp_path, capsys):
    cfg_path = tmp_path / "q.toml"
    cfg_path.write_text(tiny_config_text(idx_dataset, epochs=2) + "[quant]\nweight_bits = 8\nstate_bits = 8\n")
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run), "--no-progress"]) == 0
    for fmt in ("onnx", "qcdq", "qonnx", "fixed"):
        out = tmp_path / f"net.{fmt}"
        samples = "20" if fmt == "qonnx" else "0"
        assert main(["export", str(run), "--format", fmt, "--out", str(out), "--check-samples", samples]) == 0
        assert out.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.count(": passed") == 4 and "on 200 samples" in printed  # 0 = the whole (tiny) test split
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "s.onnx"), "--steps", "3"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert meta["hwtoolkit.steps"] == "3"


def test_cli_export_errors_are_clear(idx_dataset, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    cfg_path = tmp_path / "f.toml"
    cfg_path.write_text(tiny_config_text(idx_dataset, epochs=1))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--format", "qcdq", "--out", str(tmp_path / "x")]) == 2
    assert "needs a quantized run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
