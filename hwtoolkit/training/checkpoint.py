"""Atomic, weights-only checkpoints: plain tensors and numbers, never pickled modules.

A checkpoint is written through ``hwtoolkit.files.atomic_path`` (a temporary file
in the same directory, flushed to disk and renamed over the old one), so a run
killed at any moment leaves either the previous checkpoint or the new one, never
a half-written file. Loading uses ``torch.load(weights_only=True)``, which
refuses arbitrary pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hwtoolkit.files import atomic_path

FORMAT = "hwtoolkit-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a hwtoolkit checkpoint."""


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, dicts and lists of them) atomically to ``path``."""
    if "format" in payload:
        raise ValueError("a checkpoint payload must not have a 'format' key: it is the file's format marker")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save``; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types; its advice to load with weights_only=False is wrong here
        raise CheckpointError(f"{str(path)!r} is not a weights-only checkpoint of this toolkit: it holds objects "
                              f"other than tensors, numbers and strings, or is no checkpoint at all "
                              f"({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a {FORMAT} checkpoint")
    return payload
