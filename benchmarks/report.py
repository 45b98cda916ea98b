"""What every benchmark writes next to its table: the machine it ran on and a JSON record under results/."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def write_report(path: str | Path, record: dict) -> Path:
    """Write ``record`` as JSON to ``path`` (folders made as needed), with the machine unless it names one."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **record}, indent=2) + "\n")
    print(f"wrote {out}")
    return out
