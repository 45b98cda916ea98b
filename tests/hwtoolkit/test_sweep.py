"""Robustness sweeps: value parsing, validation before training, outputs, fidelity cosines and --resume."""

import csv
import json
import shutil

import pytest
import torch

from conftest import tiny_config_text
from hwtoolkit import config
from hwtoolkit.cli import main
from hwtoolkit.network.parameters import init_parameters
from hwtoolkit.plots import plot_sweep
from hwtoolkit.diagnostics.fidelity import cosine, measure_fidelity
from hwtoolkit.runs import load_splits
from hwtoolkit.sweep import SweepError, run_sweep
from hwtoolkit.sweep.report import COLUMNS, COST_FIGURES, aggregate, cost_figures, format_table
from hwtoolkit.sweep.values import SweepValue, parse_values, point_dirname, split_values
from targets import Update
from targets.reference import ReferenceTarget

# ------------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("text, expected", [
    ("0,0.1,1e-3", [0, 0.1, 0.001]),
    (" 0.5 , 2 ", [0.5, 2]),
    ("ideal,reram-exp", ["ideal", "reram-exp"]),
    ('"ideal","reram-exp"', ["ideal", "reram-exp"]),
    ("[0.1,0.05],[0.2, 0.1]", [[0.1, 0.05], [0.2, 0.1]]),
    ('"a,b",c', ["a,b", "c"]),
    ("'x,y',\"q\\\",z\"", ["x,y", 'q",z']),
    ('{a = 1, b = "x,y"},true', [{"a": 1, "b": "x,y"}, True]),
    ('["a,b", "c"],[[1, 2], [3]]', [["a,b", "c"], [[1, 2], [3]]]),
    ('"1",1', ["1", 1]),
])
def test_values_are_split_outside_brackets_and_quotes_and_read_as_toml(text, expected):
    values = parse_values("k", text)
    assert [v.value for v in values] == expected
    assert [type(v.value) for v in values] == [type(e) for e in expected]


def test_value_labels_are_bare_strings_and_toml_like_otherwise():
    labels = [v.label for v in parse_values("k", '"ideal",0.1,[0.1,0.05],true,["a","b"]')]
    assert labels == ["ideal", "0.1", "[0.1,0.05]", "true", '["a","b"]']


@pytest.mark.parametrize("text", ["0,,1", "0,", ",0", "", "[1,2", "1]", "[1,2},3", '"abc,d', "'x"])
def test_malformed_values_are_refused(text):
    with pytest.raises(SweepError):
        split_values(text)


def test_point_directory_names_are_safe_and_distinct():
    labels = ["0.1", "a/b", "a_b", "../x", "[0.1,0.05]", "with space", "x" * 300]
    names = [point_dirname("target.name", label) for label in labels]
    assert names[0] == "target.name=0.1"  # plain values keep a readable name
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and " " not in name and "[" not in name and len(name) <= 120
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=+,-")


def test_cosine_concatenates_parameters_and_handles_zero_and_missing():
    a = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0])}
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0])}) == pytest.approx(0.0)
    assert cosine(a, {"w": -a["w"], "b": a["b"]}) == pytest.approx(-1.0)
    assert cosine({"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([2.0])}) \
        == pytest.approx(2 / (2 ** 0.5 * 6 ** 0.5))
    zero = {"w": torch.zeros(2)}
    assert cosine(zero, a) == 0.0 and cosine(zero, zero) == 1.0


def test_aggregate_gives_mean_sample_std_min_max_per_value_in_order():
    values = [SweepValue("b", "b", "b"), SweepValue("a", "a", "a")]
    rows = [{"label": "a", "test_accuracy": 0.5, "applied_vs_ideal": 1.0, "ideal_vs_bptt": None,
             "device_vs_ideal": 0.5},
            {"label": "a", "test_accuracy": 0.7, "applied_vs_ideal": 0.0, "ideal_vs_bptt": None,
             "device_vs_ideal": 0.5},
            {"label": "b", "test_accuracy": 0.9, "applied_vs_ideal": 1.0, "ideal_vs_bptt": None,
             "device_vs_ideal": 1.0}]
    agg = aggregate(rows, values)
    assert [a["label"] for a in agg] == ["b", "a"]
    assert agg[0]["test_accuracy"] == {"mean": 0.9, "std": 0.0, "min": 0.9, "max": 0.9}
    acc = agg[1]["test_accuracy"]
    assert acc["mean"] == pytest.approx(0.6) and acc["std"] == pytest.approx(0.02 ** 0.5)  # sample std, n - 1
    assert (acc["min"], acc["max"], agg[1]["seeds"]) == (0.5, 0.7, 2)
    assert agg[1]["applied_vs_ideal"]["mean"] == pytest.approx(0.5) and agg[1]["ideal_vs_bptt"] is None


def test_cost_columns_come_from_the_summary_and_aggregate_and_print():
    """A run with costs gives pulses, EP and backprop energy per example (uJ); one without gives empty cells, and
    the printed table shows the cost columns only where some value has them."""
    summary = {"costs": {"per_example": {"ep": {"pulses": 12.0, "energy_pj": {"total": 3e6}},
                                         "backprop": {"energy_pj": {"total": 1e6}}}}}
    assert cost_figures(summary) == {"pulses_per_example": 12.0, "energy_uj_per_example": pytest.approx(3.0),
                                     "backprop_energy_uj_per_example": pytest.approx(1.0)}
    assert cost_figures({}) == dict.fromkeys(COST_FIGURES)
    values = [SweepValue("a", "a", "a")]
    rows = [{"label": "a", "test_accuracy": 0.5, **cost_figures(summary)},
            {"label": "a", "test_accuracy": 0.7, **cost_figures({**summary, "costs": {"per_example": {
                "ep": {"pulses": 14.0, "energy_pj": {"total": 5e6}}, "backprop": {"energy_pj": {"total": 1e6}}}}})}]
    agg = aggregate(rows, values)
    assert agg[0]["energy_uj_per_example"]["mean"] == pytest.approx(4.0)
    assert agg[0]["pulses_per_example"]["min"] == 12.0
    text = format_table({"key": "crossbar.preset", "aggregate": agg, "rows": rows})
    assert "EP uJ/ex" in text.splitlines()[0] and " 4 " in text.splitlines()[1] + " "
    plain = format_table({"key": "k", "aggregate": aggregate([{"label": "a", "test_accuracy": 0.5}], values),
                          "rows": []})
    assert "uJ" not in plain


# ------------------------------------------------------------------------------------ validation first


@pytest.fixture
def cfg_file(idx_dataset, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text(idx_dataset, epochs=1))
    return path


@pytest.mark.parametrize("param, values, message", [
    ("ep.beta", "0.1,-1", "-1"),
    ("optim.lr", "0.1,[0.1,0.2,0.3]", "[0.1,0.2,0.3]"),
    ("estimator", "symmetric,adam", "adam"),
    ("network.colour", "1", "unknown key"),
    ("target.device", '"cpu","tpu"', "tpu"),
    ("ep.beta", "0.1,0.1", "same point"),
    ("ep.beta", "0.1,,0.2", "empty value"),
])
def test_a_bad_value_fails_before_anything_is_trained(cfg_file, tmp_path, capsys, param, values, message):
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg_file), "--param", param, "--values", values, "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "hwtoolkit sweep: error:" in err and message in err
    assert not out.exists()


def test_bad_seeds_and_fidelity_batches_are_refused(cfg_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", str(cfg_file), "--param", "ep.beta", "--values", "0.1", "--out", str(out), "--no-progress"]
    assert main([*base, "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main([*base, "--fidelity-batches", "-1"]) == 2
    assert "--fidelity-batches" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------- a real 2 x 2 sweep


@pytest.fixture(scope="module")
def lr_sweep(idx_dataset, tmp_path_factory):
    """optim.lr at a learning rate too small to learn anything in one epoch and at one that learns, 2 seeds."""
    root = tmp_path_factory.mktemp("lr_sweep")
    cfg = root / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=1))
    out = root / "sweep"
    code = main(["sweep", str(cfg), "--param", "optim.lr", "--values", "1e-5,0.1", "--seeds", "2", "--out", str(out),
                 "--fidelity-batches", "2", "--no-progress"])
    assert code == 0
    return cfg, out


def test_sweep_writes_one_row_per_point_and_seed(lr_sweep):
    _, out = lr_sweep
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["key"], r["value"], r["seed"]) for r in rows] == [
        ("optim.lr", "1e-05", "3"), ("optim.lr", "1e-05", "4"), ("optim.lr", "0.1", "3"), ("optim.lr", "0.1", "4")]
    report = json.loads((out / "sweep.json").read_text())
    assert report["key"] == "optim.lr" and report["values"] == [1e-5, 0.1] and report["numeric"]
    assert report["seeds"] == 2 and report["error_bars"] == "min-max over seeds"
    for csv_row, row in zip(rows, report["rows"]):
        point = out / row["point"]
        summary = json.loads((point / "summary.json").read_text())
        assert summary["seed"] == row["seed"] and summary["test_accuracy"] == row["test_accuracy"]
        assert float(csv_row["test_accuracy"]) == row["test_accuracy"]
        assert config.loads((point / "config.toml").read_text()).optim.lr == (row["value"],)
    assert (out / "points" / "optim.lr=0.1" / "seed4" / "summary.json").exists()
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_sweep_results_differ_where_they_should(lr_sweep):
    _, out = lr_sweep
    report = json.loads((out / "sweep.json").read_text())
    rows = {(r["value"], r["seed"]): r for r in report["rows"]}
    tiny, good = report["aggregate"]
    assert good["test_accuracy"]["min"] > tiny["test_accuracy"]["max"] + 0.2  # lr 0.1 learns, 1e-5 does not
    assert good["test_accuracy"]["min"] > 0.9
    for value in (1e-5, 0.1):  # the two seeds start from different weights
        assert rows[(value, 3)]["test_loss"] != rows[(value, 4)]["test_loss"]
    accs = [rows[(0.1, s)]["test_accuracy"] for s in (3, 4)]
    assert good["test_accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert (good["test_accuracy"]["min"], good["test_accuracy"]["max"]) == (min(accs), max(accs))


def test_fidelity_on_the_reference_target_is_near_one(lr_sweep):
    _, out = lr_sweep
    report = json.loads((out / "sweep.json").read_text())
    for row in report["rows"]:
        assert row["applied_vs_ideal"] > 0.99 and row["device_vs_ideal"] > 0.99
        assert 0.9 < row["ideal_vs_bptt"] <= 1.0 + 1e-12
        fidelity = json.loads((out / row["point"] / "fidelity.json").read_text())
        assert fidelity["batches"] == 2 and len(fidelity["per_batch"]) == 2
        assert fidelity["applied_vs_ideal"] == row["applied_vs_ideal"]
        # the windowed figure is a column too, the point's own (not a mean of the per-batch cosines)
        assert fidelity["applied_vs_ideal_windowed"] == row["applied_vs_ideal_windowed"] > 0.99
    assert all(a["applied_vs_ideal"]["min"] > 0.99 for a in report["aggregate"])
    assert all(a["applied_vs_ideal_windowed"]["min"] > 0.99 for a in report["aggregate"])
    with open(out / "sweep.csv", newline="") as f:
        assert all(float(r["applied_vs_ideal_windowed"]) > 0.99 for r in csv.DictReader(f))


def test_existing_out_is_refused_without_resume(lr_sweep, tmp_path, capsys):
    cfg, out = lr_sweep
    before = (out / "sweep.json").stat().st_mtime_ns
    assert main(["sweep", str(cfg), "--param", "optim.lr", "--values", "1e-5,0.1", "--seeds", "2", "--out", str(out),
                 "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "sweep.json").stat().st_mtime_ns == before
    (tmp_path / "empty").mkdir()  # an empty directory is fine; a file is not
    (tmp_path / "file").write_text("x")
    assert main(["sweep", str(cfg), "--param", "ep.beta", "--values", "0.3", "--out", str(tmp_path / "file"),
                 "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_resume_keeps_finished_points_and_finishes_the_others(lr_sweep, tmp_path, capsys):
    cfg, original = lr_sweep
    out = tmp_path / "sweep"
    shutil.copytree(original, out)
    done = out / "points" / "optim.lr=1e-05" / "seed3"
    pending = out / "points" / "optim.lr=0.1" / "seed4"
    stamps = {p: p.stat().st_mtime_ns for p in (done / "summary.json", done / "fidelity.json",
                                                 done / "checkpoints" / "best.pt")}
    (pending / "summary.json").unlink()  # as if killed after its last epoch, before the test evaluation
    (pending / "fidelity.json").unlink()
    assert main(["sweep", str(cfg), "--param", "optim.lr", "--values", "1e-5,0.1", "--seeds", "2", "--out", str(out),
                 "--fidelity-batches", "2", "--resume", "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (pending / "summary.json").exists() and (pending / "fidelity.json").exists()
    old = json.loads((original / "sweep.json").read_text())["rows"]
    new = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["value"], r["seed"], r["test_accuracy"]) for r in new] == \
        [(r["value"], r["seed"], r["test_accuracy"]) for r in old]
    assert new[3]["applied_vs_ideal"] == pytest.approx(old[3]["applied_vs_ideal"], abs=1e-9)
    assert "optim.lr" in capsys.readouterr().out

    # a finished point trained with another config is not silently reused
    assert main(["sweep", str(cfg), "--param", "optim.lr", "--values", "1e-5,0.1", "--seeds", "2", "--out", str(out),
                 "--set", "ep.beta=0.3", "--resume", "--no-progress"]) == 2
    assert "holds another sweep (different sets" in capsys.readouterr().err


def test_resume_measures_the_figures_an_older_fidelity_file_lacks(lr_sweep, tmp_path):
    cfg, original = lr_sweep
    out = tmp_path / "sweep"
    shutil.copytree(original, out)
    point = out / "points" / "optim.lr=0.1" / "seed3"
    measured = json.loads((point / "fidelity.json").read_text())
    older = {k: v for k, v in measured.items() if k != "applied_vs_ideal_windowed"}  # a release without the window
    (point / "fidelity.json").write_text(json.dumps(older))
    trained = (point / "summary.json").stat().st_mtime_ns
    report = run_sweep(cfg, "optim.lr", "1e-5,0.1", seeds=2, out=out, fidelity_batches=2, resume=True,
                       progress=False, log=lambda message: None)
    assert (point / "summary.json").stat().st_mtime_ns == trained  # not trained again
    again = json.loads((point / "fidelity.json").read_text())
    assert again["applied_vs_ideal_windowed"] == pytest.approx(measured["applied_vs_ideal_windowed"], abs=1e-9)
    for c in ("applied_vs_ideal", "ideal_vs_bptt"):  # the same batches measured the same way
        assert [b[c] for b in again["per_batch"]] == pytest.approx([b[c] for b in measured["per_batch"]], abs=1e-9)
    row = next(r for r in report["rows"] if r["value"] == 0.1 and r["seed"] == 3)
    assert row["applied_vs_ideal_windowed"] == again["applied_vs_ideal_windowed"]


def test_resume_never_overwrites_another_study(lr_sweep, tmp_path, capsys):
    """--resume with another key, other values, other seeds or another base config is refused; nothing changes."""
    cfg, original = lr_sweep
    out = tmp_path / "sweep"
    shutil.copytree(original, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other_cfg = tmp_path / "other.toml"
    other_cfg.write_text(cfg.read_text().replace("epochs = 1", "epochs = 2"))
    assert other_cfg.read_text() != cfg.read_text()
    for args, what in ((["--param", "ep.beta", "--values", "0.1,0.2"], "different key, values"),
                       (["--param", "optim.lr", "--values", "1e-5,0.2"], "different values"),
                       (["--param", "optim.lr", "--values", "1e-5,0.1", "--seeds", "3"], "different seeds"),
                       (["--param", "optim.lr", "--values", "1e-5,0.1", "--seeds", "2", "--config-file"], "config")):
        config_path = str(other_cfg) if "--config-file" in args else str(cfg)
        args = [a for a in args if a != "--config-file"]
        if "--seeds" not in args:
            args += ["--seeds", "2"]
        assert main(["sweep", config_path, *args, "--out", str(out), "--resume", "--no-progress"]) == 2
        assert what in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {p: b for p, b in before.items() if p.name != ".lock"}


def test_resume_of_a_directory_without_a_sweep_is_refused(cfg_file, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    assert main(["sweep", str(cfg_file), "--param", "ep.beta", "--values", "0.1", "--out", str(tmp_path / "notes"),
                 "--resume", "--no-progress"]) == 2
    assert "holds no sweep to continue" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == [".lock", "readme.txt"]


# ------------------------------------------------------------------------- categorical values, fidelity


def test_string_values_sweep_categorically_and_bptt_runs_use_symmetric_ep_for_fidelity(cfg_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    report = run_sweep(cfg_file, "estimator", '"symmetric",bptt', seeds=1, out=out, fidelity_batches=1,
                       progress=True, log=lambda m: None)
    assert not report["numeric"] and [r["label"] for r in report["rows"]] == ["symmetric", "bptt"]
    fidelity = json.loads((out / "points" / "estimator=bptt" / "seed3" / "fidelity.json").read_text())
    assert fidelity["estimator"] == "symmetric" and fidelity["device_vs_ideal"] > 0.99
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "sweep estimator" in capsys.readouterr().err  # the outer progress bar


class _WritePathTarget(ReferenceTarget):
    """Exact relaxations, but the write path drops every update of the first layer and doubles the rest."""

    def _apply_update(self, update):
        return super()._apply_update(Update({n: 2 * d for n, d in update.delta.items() if n not in ("w1", "b1")}))


class _NoisyReadTarget(ReferenceTarget):
    """Exact write path, but states are read back with independent noise in every phase (a poor ADC)."""

    gen = torch.Generator().manual_seed(0)

    def relax(self, *args, **kwargs):
        r = super().relax(*args, **kwargs)
        r.states = [s + 0.3 * torch.randn(s.shape, generator=self.gen, dtype=s.dtype) for s in r.states]
        return r


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided", "random_sign"])
def test_fidelity_cosines_see_what_a_device_does(tiny_config, estimator):
    cfg = config.loads(tiny_config.to_toml(), [f'estimator="{estimator}"'])
    splits = load_splits(cfg)
    weights = init_parameters(cfg.network, cfg.seed)

    def fidelity(cls):
        target = cls(cfg.network)
        target.program(weights)
        return measure_fidelity(cfg, target, splits, cfg.seed, batches=3)

    exact = fidelity(ReferenceTarget)
    assert exact["applied_vs_ideal"] > 0.9999 and exact["device_vs_ideal"] > 0.9999
    assert exact["applied_vs_ideal_windowed"] > 0.9999  # the summed change is the sum of the ideal updates
    assert exact["estimator"] == estimator and len(exact["per_batch"]) == 3
    write = fidelity(_WritePathTarget)
    assert write["device_vs_ideal"] > 0.9999 and write["applied_vs_ideal"] < 0.95
    assert write["applied_vs_ideal_windowed"] < 0.95
    assert write["ideal_vs_bptt"] == pytest.approx(exact["ideal_vs_bptt"], abs=0.05)
    noisy = fidelity(_NoisyReadTarget)
    assert noisy["device_vs_ideal"] < 0.9 and noisy["applied_vs_ideal"] < 0.9


def test_fidelity_windows_of_the_first_batches(tiny_config):
    cfg = config.loads(tiny_config.to_toml())
    splits = load_splits(cfg)
    target = _WritePathTarget(cfg.network)
    target.program(init_parameters(cfg.network, cfg.seed))
    f = measure_fidelity(cfg, target, splits, cfg.seed, batches=3, windows=(1, 3))
    assert set(f["windowed_by_batches"]) == {"1", "3"}
    assert f["windowed_by_batches"]["1"] == pytest.approx(f["per_batch"][0]["applied_vs_ideal"], abs=1e-12)
    assert f["windowed_by_batches"]["3"] == pytest.approx(f["applied_vs_ideal_windowed"], abs=1e-12)
    with pytest.raises(ValueError, match="between 1 and the 3 measured batches"):
        measure_fidelity(cfg, target, splits, cfg.seed, batches=3, windows=(4,))


def test_plot_sweep_draws_categories_and_lists_without_fidelity(tmp_path):
    values = [[0.1, 0.05], [0.2, 0.1]]
    rows = [{"label": str(v), "value": v, "seed": s, "test_accuracy": 0.5 + 0.1 * i + 0.01 * s,
             "applied_vs_ideal": None, "ideal_vs_bptt": None, "device_vs_ideal": None}
            for i, v in enumerate(values) for s in (0, 1)]
    agg = aggregate(rows, [SweepValue(str(v), v, str(v)) for v in values])
    report = {"key": "optim.lr", "seeds": 2, "rows": rows, "aggregate": agg}
    path = plot_sweep(report, tmp_path / "p" / "sweep.png")
    assert path.read_bytes().startswith(b"\x89PNG")
