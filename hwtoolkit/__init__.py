"""hwtoolkit: train Equilibrium Propagation networks on real and simulated hardware.

The Python API (``hwtoolkit.load_config``, ``train``, ``evaluate``, ``run_sweep``, ``tune``, ``gdu``,
``export``, ``open_target``, ``read_run``, ``available_targets``, ``ExecutorSpec``) is documented in docs/python_api.md; it is imported on
first use, so that ``import hwtoolkit`` stays cheap.
"""

__version__ = "0.1.0"

_API = ("Config", "ExecutorSpec", "Run", "available_targets", "evaluate", "export", "gdu", "load_config",
        "open_target", "read_run", "run_sweep", "train", "tune")


def __getattr__(name: str):
    if name in _API:
        from hwtoolkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'hwtoolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
