"""The numerics comparison of docs/crossbar.md (benchmarks/numerics_table.py): Welch's test on seed sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.numerics_table import compare, main


def test_equal_seed_sets_differ_by_nothing_and_a_shift_is_found() -> None:
    same = compare([86.1, 86.4, 86.0], [86.1, 86.4, 86.0])
    assert same["difference"] == 0 and same["p_value"] == pytest.approx(1.0)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    shifted = compare([86.1, 86.4, 86.0, 86.2], [87.1, 87.4, 87.0, 87.2])
    assert shifted["difference"] == pytest.approx(1.0) and shifted["p_value"] < 1e-3
    assert 0 < shifted["ci95"][0] < 1 < shifted["ci95"][1]


def sweep(path: Path, accuracies: dict[str, list[float]], sets: list[str]) -> Path:
    rows = [{"key": "crossbar.preset", "value": preset, "seed": seed + 1, "test_accuracy": a / 100,
             "point": f"points/{preset}/seed{seed + 1}"}
            for preset, values in accuracies.items() for seed, a in enumerate(values)]
    path.write_text(json.dumps({"key": "crossbar.preset", "sets": sets, "rows": rows}))
    return path


def test_the_table_compares_the_presets_both_sweeps_hold(tmp_path: Path, capsys) -> None:
    old = sweep(tmp_path / "torch.json", {"pcm": [85.0, 85.5, 85.2], "ideal": [88.0, 88.1]}, [])
    new = sweep(tmp_path / "native.json", {"pcm": [85.1, 85.3, 85.6]}, ['crossbar.numerics="native"'])
    assert main(["--torch", str(old), "--native", str(new), "--json", str(tmp_path / "t.json")]) == 0
    table = json.loads((tmp_path / "t.json").read_text())["presets"]
    assert list(table) == ["pcm"] and table["pcm"]["seeds"] == [3, 3]
    assert "| `pcm` | 85.23 ± 0.25 | 85.33 ± 0.25 | +0.10 |" in capsys.readouterr().out


def test_too_few_seeds_or_no_common_preset_is_a_usage_error(tmp_path: Path) -> None:
    old = sweep(tmp_path / "torch.json", {"pcm": [85.0]}, [])
    new = sweep(tmp_path / "native.json", {"pcm": [85.1, 85.3], "fefet": [87.0, 87.1]}, [])
    with pytest.raises(SystemExit):
        main(["--torch", str(old), "--native", str(new)])
    other = sweep(tmp_path / "other.json", {"ideal": [88.0, 88.2]}, [])
    with pytest.raises(SystemExit):
        main(["--torch", str(other), "--native", str(new)])
