"""The run directory: resolved config, metrics.jsonl, summary.json, checkpoints and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwtoolkit.files import write_text_atomic


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def device_checkpoint(self) -> Path:
        """The device's state when the test set was evaluated (targets with ``capabilities.device_state``)."""
        return self.root / "checkpoints" / "device.pt"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep only the records of epochs numbered below ``before_epoch`` (a resumed run writes the rest again)."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) < before_epoch]
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.summary, json.dumps(summary, indent=2) + "\n")
