"""The command line as a user runs it: exit codes, messages and the files it writes."""

import json

import pytest

from conftest import tiny_config_text
from hwtoolkit.cli import main


def test_targets_lists_the_reference_target(capsys):
    assert main(["targets"]) == 0
    assert "reference" in capsys.readouterr().out


def test_train_with_overrides_then_evaluate(idx_dataset, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--set", "train.epochs=1", "--set", "estimator=bptt",
                 "--target", "reference", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["estimator"] == "bptt" and summary["target"] == "reference"
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(summary["test_accuracy"])


@pytest.mark.parametrize("args, message", [
    (["--set", "ep.beta=-1"], "ep.beta = -1"),
    (["--set", "estimator=adam"], "estimator = 'adam'"),
    (["--set", "network.colour=1"], "unknown key"),
    (["--target", "nope"], "unknown target 'nope'"),
    (["--set", "target.device=tpu"], "target.device"),
    (["--target", "crossbar", "--set", "crossbar.up_down=2"], "crossbar.up_down = 2"),
    (["--target", "crossbar", "--set", "crossbar.preset=memristor"], "crossbar.preset = 'memristor' is invalid"),
])
def test_bad_input_fails_with_a_clear_message(idx_dataset, tmp_path, capsys, args, message):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_says_how_to_get_it(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_config_text(tmp_path / "nowhere"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "nowhere" in capsys.readouterr().err


GDU_CONFIG = """
seed = 1
[network]
input_shape = [1, 6, 6]
hidden = [12, 10]
classes = 5
output = "mse"
[ep]
free_steps = 400
nudged_steps = 6
"""


def test_gdu_command_writes_figures_and_plot(tmp_path, capsys):
    cfg = tmp_path / "gdu.toml"
    cfg.write_text(GDU_CONFIG)
    out = tmp_path / "gdu.json"
    plot = tmp_path / "gdu.png"
    assert main(["gdu", str(cfg), "--beta", "1e-4", "--random-input", "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    one_sided, symmetric = report["results"]
    assert one_sided["estimator"] == "one_sided" and symmetric["estimator"] == "symmetric"
    assert set(one_sided["fidelity"]) == {"s1", "s2", "s3", "w1", "b1", "w2", "b2", "w3", "b3"}
    assert max(f["relative_error"] for f in one_sided["fidelity"].values()) < 1e-2
    assert (tmp_path / "gdu_one_sided.png").stat().st_size > 5000
    assert "rel. error" in capsys.readouterr().out
    assert one_sided["free_residual"] < 1e-10


def test_gdu_warns_when_the_free_phase_has_not_converged(tmp_path, capsys):
    cfg = tmp_path / "gdu.toml"
    cfg.write_text(GDU_CONFIG)
    assert main(["gdu", str(cfg), "--beta", "1e-4", "--random-input", "--free-steps", "5", "--estimator",
                 "one_sided", "--plot", str(tmp_path / "g.png")]) == 0
    assert "has not converged" in capsys.readouterr().out


def test_gdu_on_an_untied_network_reports_asymmetry(tmp_path, capsys):
    cfg = tmp_path / "gdu.toml"
    cfg.write_text("""
[network]
input_shape = [1, 5, 5]
hidden = [8]
classes = 3
output = "mse"
tied = false
[ep]
free_steps = 80
nudged_steps = 4
""")
    out = tmp_path / "g.json"
    assert main(["gdu", str(cfg), "--random-input", "--estimator", "one_sided", "--json", str(out),
                 "--plot", str(tmp_path / "g.png")]) == 0
    assert json.loads(out.read_text())["results"][0]["asymmetry"]["w2"] > 0.1
    assert "asymmetry" in capsys.readouterr().out


def test_training_into_an_existing_run_without_resume_fails_cleanly(idx_dataset, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--set", "train.epochs=1", "--no-progress"]) == 0
    summary = (run / "summary.json").read_text()
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(run), "--set", "train.epochs=1", "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == summary


def test_targets_lists_the_crossbar(capsys):
    assert main(["targets"]) == 0
    assert "crossbar" in capsys.readouterr().out


def test_evaluate_after_simulated_drift(idx_dataset, tmp_path, capsys):
    """--wait lets drift act before the read: a strongly drifting device reads worse, an ideal one the same."""
    extra = '[target]\nname = "crossbar"\n[crossbar]\ndrift_nu = 0.3\n'
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=2, extra=extra))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    results = {}
    for wait in ("0", "1e8"):
        assert main(["evaluate", str(run), "--wait", wait]) == 0
        results[wait] = json.loads(capsys.readouterr().out)
    assert results["1e8"]["test_loss"] > results["0"]["test_loss"] + 0.01
    assert main(["evaluate", str(run), "--wait", "-1"]) == 2
    assert "argument --wait: -1.0 is invalid" in capsys.readouterr().err
