"""The error of the sweep package."""


class SweepError(ValueError):
    """A sweep cannot be run as asked (bad values, output directory in use, ...)."""
