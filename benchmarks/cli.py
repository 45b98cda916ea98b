"""Command-line parsing the benchmark scripts share."""

from __future__ import annotations

import argparse
from typing import Iterable


def chosen_names(parser: argparse.ArgumentParser, option: str, text: str, valid: Iterable[str]) -> list[str]:
    """The comma-separated names in ``text``; a usage error naming ``option`` and the valid names otherwise."""
    valid = list(valid)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown:
        parser.error(f"{option}: unknown {unknown}; valid: {valid}")
    if not names:
        parser.error(f"{option}: give at least one of {valid}")
    return names
