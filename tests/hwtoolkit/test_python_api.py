"""Every code block of docs/python_api.md runs, in order, in one namespace (the page is a working script)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hwtoolkit
from hwtoolkit.data import DatasetNotFoundError, load_dataset

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "python_api.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_page_has_code_for_every_api_function() -> None:
    code = "\n".join(code_blocks(PAGE.read_text()))
    for name in hwtoolkit._API:
        if name not in ("Config", "Run"):
            assert f"hwtoolkit.{name}(" in code, f"docs/python_api.md never calls hwtoolkit.{name}"


@pytest.mark.slow
def test_every_code_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    try:
        load_dataset("fashion-mnist", download=False, limit=10)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed (make test installs it): {e}")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)  # the page writes runs/ relative to where it runs
    namespace: dict = {}
    blocks = code_blocks(PAGE.read_text())
    assert len(blocks) >= 8
    for i, block in enumerate(blocks):
        exec(compile(block, f"{PAGE.name}, block {i + 1}", "exec"), namespace)  # noqa: S102 - the page's own code
    out = capsys.readouterr().out
    assert "crossbar.up_down = 3.0 is invalid" in out  # the error shown in section 1
    assert (tmp_path / "runs" / "api-study" / "sweep" / "sweep.json").exists()
    assert "test accuracy after an hour" in out
