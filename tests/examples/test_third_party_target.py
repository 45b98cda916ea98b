"""The example third-party target: installed with pip, found through its entry point, trained by the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "third_party_target"
NAME, MODULE = "noisy_float", "noisy_float_target"
DESCRIPTION = "float weights read through a noisy analog read path"
CHANCE = 0.25  # the tiny data set of conftest has four classes


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example installed by pip (offline, no dependencies, no cache) into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # setuptools leaves build files next to the sources: not in the repository
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--no-cache-dir", "--target", str(site), str(source)], check=True,
                   cwd=source.parent, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, timeout=120)
    assert (site / f"{MODULE}.py").exists()
    assert any(site.glob("hwtoolkit_example_target-*.dist-info/entry_points.txt"))
    return site


@pytest.fixture(scope="module")
def cli(installed, idx_dataset, tmp_path_factory) -> dict:
    """Four ``hwtoolkit`` commands, run at once in fresh interpreters that see the installed example.

    ``targets``; a two-epoch training run with read noise; and two runs with a bad option. Returns each
    command's (return code, stdout, stderr) and the folders they were given.
    """
    work = tmp_path_factory.mktemp("cli")
    cfg = work / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=2))
    train = ["train", str(cfg), "--target", NAME, "--no-progress", "--set"]
    commands = {
        "targets": ["targets"],
        "train": [*train, "target.read_noise=0.01", "--out", str(work / "run")],
        "negative": [*train, "target.read_noise=-1", "--out", str(work / "negative")],
        "unknown": [*train, "target.nope=1", "--out", str(work / "unknown")],
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    running = {key: subprocess.Popen([sys.executable, "-m", "hwtoolkit", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=work)
               for key, args in commands.items()}
    done = {}
    for key, process in running.items():
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        done[key] = (process.returncode, out, err)
    return {"results": done, "work": work}


def test_hwtoolkit_targets_lists_it_with_its_description(cli):
    rc, out, err = cli["results"]["targets"]
    assert rc == 0, err
    assert re.search(rf"^{NAME}\s+{re.escape(DESCRIPTION)}", out, re.MULTILINE), out
    assert re.search(r"^reference\s", out, re.MULTILINE)  # the built-in targets are still there


def test_hwtoolkit_train_trains_on_it_with_read_noise(cli):
    rc, out, err = cli["results"]["train"]
    assert rc == 0, err
    run = cli["work"] / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["target"] == NAME
    assert summary["test_accuracy"] > 2 * CHANCE  # the tiny set is easy: the reference reaches 1.0 in 2 epochs
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    assert all(m["train_residual_max"] > 0 for m in metrics)  # fresh noise at every step: the reads are noisy
    assert (run / "checkpoints" / "device.pt").exists()  # its noise generator is device state


@pytest.mark.parametrize(("key", "message"), [
    ("negative", "target.read_noise = -1.0 is invalid: expected a finite number in [0, 10]"),
    ("unknown", "unknown key(s) ['nope'] in [target]"),
])
def test_hwtoolkit_train_rejects_a_bad_option_naming_the_key(cli, key, message):
    rc, out, err = cli["results"][key]
    assert rc != 0
    assert message in err
    assert not (cli["work"] / key).exists()  # refused before the run directory is made


# ---- in process: the installed distribution on sys.path, the registry restored afterwards ----------------------


@pytest.fixture
def example(installed, monkeypatch):
    """The example's module, found through its entry point; sys.path, sys.modules and the registry are restored."""
    import targets
    from targets import registry

    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    assert NAME in targets.available()
    cls = targets.get(NAME)
    yield sys.modules[cls.__module__]
    sys.modules.pop(MODULE, None)


def _spec(hidden: tuple[int, ...], output: str):
    from hwtoolkit.network import NetworkSpec

    return NetworkSpec(input_shape=(1, 6, 6), hidden=hidden, classes=3, output=output)


X = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1])


def _phases(target, weights) -> list[torch.Tensor]:
    """A free phase, a nudged phase from its end, and the class scores of both."""
    target.program(weights)
    free = target.relax(X, 30)
    nudged = target.relax(X, 10, 0.5, Y, init=free)
    return [*free.states, free.logits, *nudged.states, nudged.logits]


def test_get_returns_the_class_and_its_options_validate(example):
    import targets
    from targets import TargetError

    cls = targets.get(NAME)
    assert cls is example.NoisyFloatTarget and cls.name == NAME and cls.description.startswith(DESCRIPTION)
    assert cls.Options() == example.NoisyFloatOptions(read_noise=0.0, update_gain=1.0, seed=0)
    options = targets.configure(NAME, {"read_noise": 0.1}, context=targets.RunContext(seed=7))
    assert (options.read_noise, options.update_gain, options.seed) == (0.1, 1.0, 7)  # the run's seed
    for bad, key in (({"read_noise": -1}, "target.read_noise"), ({"read_noise": math.nan}, "target.read_noise"),
                     ({"update_gain": 0}, "target.update_gain"), ({"seed": -2}, "target.seed"),
                     ({"read_noise": "x"}, "target.read_noise"), ({"nope": 1}, "'nope'")):
        with pytest.raises(TargetError, match=re.escape(key)):
            targets.open(NAME, _spec((8,), "ce"), **bad)


@pytest.mark.parametrize(("hidden", "output"), [((12, 8), "mse"), ((8,), "ce")])
def test_without_noise_its_phases_are_the_reference_targets(example, hidden, output):
    """A correct EP target: with read_noise = 0 it relaxes exactly as the reference target does; with noise
    every read is noisy, the input layer's too (a one-layer network reads no other array)."""
    import targets
    from hwtoolkit.network.parameters import init_parameters

    spec = _spec(hidden, output)
    weights = init_parameters(spec, 2)
    exact = targets.open(NAME, spec, seed=4)
    assert exact.capabilities.exact and not exact.capabilities.device_state
    reference = _phases(targets.open("reference", spec, dtype="float32"), weights)
    for ours, theirs in zip(_phases(exact, weights), reference, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)

    noisy = targets.open(NAME, spec, read_noise=0.2, seed=4)
    assert not noisy.capabilities.exact and noisy.capabilities.device_state
    assert (_phases(noisy, weights)[0] - reference[0]).abs().max() > 1e-2


def test_update_gain_scales_what_is_written(example):
    import targets
    from hwtoolkit.network.parameters import init_parameters

    spec = _spec((8,), "ce")
    weights = init_parameters(spec, 1)
    target = targets.open(NAME, spec, update_gain=0.5)
    target.program(weights)
    target.apply_update({"w1": torch.ones_like(weights["w1"])})
    torch.testing.assert_close(target.read_weights()["w1"], weights["w1"] + 0.5)
    torch.testing.assert_close(target.read_weights()["b1"], weights["b1"])


def test_device_state_continues_with_the_very_same_draws(example):
    import targets
    from hwtoolkit.network.parameters import init_parameters
    from targets import TargetError

    spec = _spec((8,), "ce")
    weights = init_parameters(spec, 3)
    original = targets.open(NAME, spec, read_noise=0.1, seed=1)
    original.program(weights)
    original.relax(X, 5)  # advances the noise generator
    state = original.device_state()
    copy = targets.open(NAME, spec, read_noise=0.1, seed=99)
    copy.load_device_state(state)
    for a, b in zip(original.relax(X, 5).states, copy.relax(X, 5).states, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(TargetError, match="device state"):
        copy.load_device_state({"weights": {}, "generator": state["generator"]})
    with pytest.raises(TargetError, match="device state"):
        copy.load_device_state({"weights": state["weights"]})


def test_evaluate_reproduces_the_runs_test_figure_draw_for_draw(example, cli):
    """``hwtoolkit evaluate`` restores the device the run ended on (its noise generator included)."""
    from hwtoolkit import api

    assert cli["results"]["train"][0] == 0
    run = cli["work"] / "run"
    summary = json.loads((run / "summary.json").read_text())
    result = api.evaluate(run, log=lambda line: None)
    assert result["test_accuracy"] == summary["test_accuracy"]
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=0, abs=1e-6)
