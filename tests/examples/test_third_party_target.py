"""The example third-party target: installed with pip, found through its entry point, trained by the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "third_party_target"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example installed by pip (offline, no dependencies) into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # setuptools leaves build files next to the sources: not in the repository
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, cwd=source.parent,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert (site / "noisy_float_target.py").exists()
    assert any(site.glob("hwtoolkit_example_target-*.dist-info/entry_points.txt"))
    return site


def _hwtoolkit(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hwtoolkit", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_cli_lists_it_and_trains_with_its_options(installed, idx_dataset, tmp_path):
    listed = _hwtoolkit(installed, "targets")
    assert listed.returncode == 0
    assert "noisy_float  float weights read through a noisy analog read path" in listed.stdout

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config_text(idx_dataset, epochs=2))
    out = tmp_path / "run"
    done = _hwtoolkit(installed, "train", str(cfg), "--target", "noisy_float", "--set", "target.read_noise=0.01",
                      "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == "noisy_float"
    assert summary["test_accuracy"] > 0.5  # four classes: chance is 0.25, the reference reaches about 0.9

    for option, message in (("target.read_noise=-1", "target.read_noise = -1.0 is invalid"),
                            ("target.nope=1", "unknown key(s) ['nope'] in [target]")):
        bad = _hwtoolkit(installed, "train", str(cfg), "--target", "noisy_float", "--set", option,
                         "--out", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr
        assert not (tmp_path / "bad").exists()


def test_without_noise_its_phases_are_the_reference_targets(installed, monkeypatch):
    """A correct EP target: with read_noise = 0 it relaxes exactly as the reference target does."""
    import targets
    from hwtoolkit.network import NetworkSpec
    from hwtoolkit.network.parameters import init_parameters
    from targets import registry

    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    cls = targets.get("noisy_float")
    assert cls.__module__ == "noisy_float_target" and cls.Options().read_noise == 0.0
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(12, 8), classes=3, output="mse")
    with pytest.raises(targets.TargetError, match="target.update_gain = 0.0 is invalid"):
        targets.open("noisy_float", spec, update_gain=0.0)

    weights = init_parameters(spec, 2)
    x, y = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1])
    ours, reference = targets.open("noisy_float", spec, seed=4), targets.open("reference", spec)
    results = []
    for target in (ours, reference):
        target.program(weights)
        free = target.relax(x, 30)
        nudged = target.relax(x, 10, 0.5, y, init=free)
        results.append([*free.states, *nudged.states])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    noisy = targets.open("noisy_float", spec, read_noise=0.2, seed=4)
    noisy.program(weights)
    assert (noisy.relax(x, 30).states[0] - results[1][0]).abs().max() > 1e-3
