"""The fused write kernel (write_kernel.c): built with the system C compiler at first use, loaded with ctypes.

A polarity's write then takes one pass over its devices instead of 20-30 tensor passes and the gathers and scatters
of a sparse write, with the same numbers bit for bit (docs/crossbar.md, "Speed"). Torch still draws the random
numbers and computes exp, expm1 and log. Without a compiler, on other torch devices than the CPU, in float64, for the
table response and for soft bounds with one slope 0, writes take the torch path; ``HWTOOLKIT_CROSSBAR_NATIVE=0``
forces it everywhere.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from .response import ConstantStep, ExponentialStep, ResponseModel, SoftBounds, Value

if TYPE_CHECKING:
    from .devices import Constants, Devices, Pulses

SOURCE = Path(__file__).with_name("write_kernel.c")
# Vectorised for this machine's CPU; never -ffast-math and no contraction into fused multiply-adds: the torch path's
# rounding, op by op (-fno-math-errno only lets sqrtf be one instruction).
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared")
SWITCH = "HWTOOLKIT_CROSSBAR_NATIVE"  # "0": always the torch path
CONSTANT, SOFT_BOUNDS, EXPONENTIAL = 0, 1, 2  # the kernel's models ...
DENSE, SPARSE, MASKED = 0, 1, 2  # ... and layouts


_F = ctypes.c_void_p  # a float32 array


class _Write(ctypes.Structure):
    """write_kernel.c's ``xb_write``, field for field."""

    _fields_ = [("k", ctypes.c_int64), ("numel", ctypes.c_int64), ("layout", ctypes.c_int), ("idx", ctypes.c_void_p),
                ("g", _F), ("n", _F), ("d", _F), ("polarity", ctypes.c_float), ("one_sided", ctypes.c_int),
                ("dw", ctypes.c_float), ("gain_up", _F), ("gain_down", _F), ("clip_lo", _F),
                ("clip_hi", _F), ("free_", _F), ("model", ctypes.c_int), ("a_up", _F), ("a_down", _F),
                ("b_up", _F), ("b_down", _F), ("gamma_up", ctypes.c_float), ("gamma_down", ctypes.c_float),
                ("work", _F), ("term", _F), ("c2c_normal", _F), ("c2c_std", ctypes.c_float), ("write_normal", _F),
                ("write_std", ctypes.c_float), ("offset", _F), ("pulses", _F), ("written_at", _F),
                ("now", ctypes.c_float)]


def cache_dir() -> Path:
    """Where built kernels are kept: ``$HWTOOLKIT_CACHE``, else ``$XDG_CACHE_HOME/hwtoolkit`` or
    ``~/.cache/hwtoolkit``, under ``native/``."""
    root = os.environ.get("HWTOOLKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                      "hwtoolkit")
    return Path(root, "native")


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use (None, with one warning, where it cannot be built)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        warnings.warn("crossbar: no C compiler (cc or $CC) found, so writes take the slower torch path", stacklevel=2)
        return None
    path = kernel_path(compiler)
    try:
        lib = _cached(path)
        if lib is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # built aside, then moved in whole
                built = Path(tmp, path.name)
                subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE), "-lm"], check=True,
                               capture_output=True, text=True)
                os.replace(built, path)
            lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = (e.stderr.strip().splitlines()[:3] or [f"exit status {e.returncode}"]) \
            if isinstance(e, subprocess.CalledProcessError) else [str(e)]
        warnings.warn(f"crossbar: the write kernel did not build or load ({' '.join(detail)}), so writes take the "
                      f"slower torch path", stacklevel=2)
        return None
    lib.xb_finish.restype = ctypes.c_int64
    for name in ("xb_soft_arg", "xb_exp_args", "xb_finish"):
        getattr(lib, name).argtypes = [ctypes.POINTER(_Write)]
    for name in ("xb_expand", "xb_compact"):
        getattr(lib, name).argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _cached(path: Path) -> ctypes.CDLL | None:
    """The kernel already built at ``path``; None where there is none or it does not load (a damaged file is
    removed, to be built again)."""
    if not path.exists():
        return None
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return None


def kernel_path(compiler: str) -> Path:
    """Where the kernel built by ``compiler`` for this machine is kept (named by a hash of what it is built from)."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS, _machine(compiler))).encode())
    return cache_dir() / f"write_kernel-{key.hexdigest()[:16]}.so"


def _machine(compiler: str) -> str:
    """The compiler's version and the CPU's features: a kernel built with -march=native is for this pair only."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        version = ""
    cpu = Path("/proc/cpuinfo")
    flags = next((line for line in cpu.read_text().splitlines() if line.startswith("flags")), "") \
        if cpu.exists() else ""
    return f"{version} {platform.machine()} {flags}"


def model_code(model: ResponseModel) -> int | None:
    """The kernel's code for a response model, or None where the kernel does not compute it."""
    if isinstance(model, SoftBounds):
        return SOFT_BOUNDS if model.slope_up and model.slope_down else None
    if isinstance(model, ExponentialStep):
        return EXPONENTIAL
    if isinstance(model, ConstantStep):
        return CONSTANT
    return None


def usable(model: ResponseModel, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether writes of this model on this torch device and dtype take the kernel."""
    switch = os.environ.get(SWITCH, "1")
    if switch not in ("0", "1"):
        raise ValueError(f"{SWITCH} must be 0 (the torch path) or 1 (the fused kernel where it runs), not {switch!r}")
    if switch == "0" or device.type != "cpu" or dtype != torch.float32:
        return False
    return model_code(model) is not None and library() is not None


_EXPANDED: weakref.WeakKeyDictionary[Constants, dict[str, tuple[torch.Tensor, torch.Tensor]]] = \
    weakref.WeakKeyDictionary()


def _expanded(constants: Constants) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every write-path constant as (up, down) float32 arrays of one value per device (the kernel reads no shared
    values: its loops vectorise that way), made once per array."""
    if constants not in _EXPANDED:
        def per_device(value: Value) -> torch.Tensor:
            flat = (value if torch.is_tensor(value) else torch.tensor(value, dtype=torch.float32)).reshape(-1)
            if flat.numel() not in (1, constants.numel):  # the kernel reads one value per device
                raise ValueError(f"a write constant of {flat.numel()} values for {constants.numel} devices")
            return flat.expand(constants.numel).contiguous()

        out = {}
        for name, value in {"free": 1.0, **constants.values}.items():
            up, down = value if isinstance(value, tuple) else (value, value)
            out[name] = (per_device(up), per_device(down))
        _EXPANDED[constants] = out
    return _EXPANDED[constants]


def respond(lib: ctypes.CDLL, model: ResponseModel, dev: Devices, idx: torch.Tensor | None, n: torch.Tensor,
            d: torch.Tensor, masked: bool, polarity: int, one_sided: bool, dw: float,
            noise: tuple[torch.Tensor | None, float, torch.Tensor | None, float], now: float,
            buffer: Callable[[str, int], torch.Tensor]) -> int:
    """Give one polarity's devices (all, or the flat indices ``idx``) their pulses as ``PairArray._send`` and
    ``_respond`` do; returns how many of the pulsed ones ended clipped at a bound.

    ``n`` and ``d``: the pulse counts and requested changes, per entry of ``idx``, or per device if ``masked`` (then
    ``idx`` lists the devices with a count); ``polarity`` +1 for the positive devices, -1 for the negative ones;
    ``noise``: the cycle-to-cycle and the write noise's standard normals per entry (None: none) and their scales,
    drawn by the caller in the torch path's order; ``buffer(name, size)``: a scratch buffer of ``size`` floats.
    The transcendentals are torch's, on the same values in the same order as in the tensor path.
    """
    c = _expanded(dev.constants)
    code = model_code(model)
    numel = dev.g.numel()
    k = numel if idx is None else idx.numel()
    c2c_normal, c2c_std, write_normal, write_std = noise
    work = buffer("native.work", k)
    layout = DENSE if idx is None else MASKED if masked else SPARSE
    w = _Write(k=k, numel=numel, layout=layout, idx=_pointer(idx), g=_pointer(dev.g), n=_pointer(n), d=_pointer(d),
               polarity=polarity, one_sided=one_sided, dw=dw, gain_up=_pointer(c["gain"][0]),
               gain_down=_pointer(c["gain"][1]), clip_lo=_pointer(c["clip_lo"][0]), clip_hi=_pointer(c["clip_hi"][0]),
               free_=_pointer(c["free"][0]), model=code, c2c_std=c2c_std, write_std=write_std,
               offset=_pointer(dev.offset), pulses=_pointer(dev.pulses), written_at=_pointer(dev.written_at), now=now)
    ref = ctypes.byref(w)
    # what torch transforms: soft bounds expm1(work); the exponential step log(exp(work) + term)
    args = [work, buffer("native.term", k)] if code == EXPONENTIAL else [work] if code == SOFT_BOUNDS else []
    spread = layout == MASKED and bool(args)  # the arguments computed for every device, transformed for the entries'
    computed = [buffer(f"native.arg{i}_at_devices", numel) for i in range(len(args))] if spread else args
    if computed:
        w.work, w.term = _pointer(computed[0]), _pointer(computed[-1])
    if spread:
        w.k, w.layout = numel, DENSE
    if code == SOFT_BOUNDS:
        (w.a_up, w.a_down), (w.b_up, w.b_down) = (map(_pointer, c[key]) for key in ("target", "rate"))
        lib.xb_soft_arg(ref)
    elif code == EXPONENTIAL:
        (w.a_up, w.a_down), (w.b_up, w.b_down) = (map(_pointer, c[key]) for key in ("mid", "half"))
        w.gamma_up, w.gamma_down = model.gamma_up, model.gamma_down
        lib.xb_exp_args(ref)
    if spread:
        for at_devices, entries in zip(computed, args):
            lib.xb_compact(k, idx.data_ptr(), at_devices.data_ptr(), entries.data_ptr())
    if code == SOFT_BOUNDS:
        work.expm1_()
    elif code == EXPONENTIAL:
        work.exp_().add_(args[1]).log_()
    w.k, w.layout = k, layout
    if spread:  # the finishing pass reads the result at the devices
        lib.xb_expand(k, idx.data_ptr(), work.data_ptr(), computed[0].data_ptr())
    for name, values in (("c2c_normal", c2c_normal), ("write_normal", write_normal)):
        if values is not None and layout == MASKED:  # the finishing pass reads them at their devices
            at_devices = buffer(f"native.{name}_at_devices", numel)
            lib.xb_expand(k, idx.data_ptr(), values.data_ptr(), at_devices.data_ptr())
            values = at_devices
        setattr(w, name, _pointer(values))
    saturated = int(lib.xb_finish(ref))
    if saturated < 0:
        raise RuntimeError(f"the write kernel has no case for model {code}, layout {layout}")
    return saturated


def compact(lib: ctypes.CDLL, idx: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``values[idx]`` into ``out`` (what ``torch.index_select`` gives, in a fraction of its time on the CPU)."""
    lib.xb_compact(idx.numel(), _pointer(idx), _pointer(values), _pointer(out))
    return out


def _pointer(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    if not t.is_contiguous() or t.dtype not in (torch.float32, torch.int64):
        raise ValueError(f"the write kernel needs contiguous float32 or int64 tensors, not {t.dtype} {t.stride()}")
    return t.data_ptr()
