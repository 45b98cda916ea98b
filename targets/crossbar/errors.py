"""The crossbar's configuration error, and the check every configuration class raises it with."""

from __future__ import annotations


class CrossbarConfigError(ValueError):
    """A crossbar parameter is invalid; the message names it as ``crossbar.<key>``."""


def check(ok: bool, key: str, value: object, valid: str) -> None:
    """Raise ``CrossbarConfigError`` naming ``crossbar.<key>``, its value and what is valid, unless ``ok``."""
    if not ok:
        raise CrossbarConfigError(f"crossbar.{key} = {value!r} is invalid: expected {valid}")
