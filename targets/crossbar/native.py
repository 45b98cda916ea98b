"""The fused write kernel (write_kernel.c): built with the system C compiler at first use, loaded with ctypes.

A polarity's write then takes one pass over its devices instead of 20-30 tensor passes and the gathers and scatters
of a sparse write (docs/crossbar.md, "Speed"). With ``crossbar.numerics = "torch"`` torch draws the random numbers and
computes exp, expm1 and log, and the numbers are the tensor path's bit for bit; with ``"native"`` (the default) the
kernel draws the writes' and reads' random numbers itself, from seeds drawn from the target's torch generator, and
computes those functions and the drift's power with its own. The table response's interpolation and the index scans
are the kernel's in both (bit for bit torch's). Without a compiler, on other torch devices than the CPU, in float64,
for the table response and for soft bounds with one slope 0, writes take the torch path;
``HWTOOLKIT_CROSSBAR_NATIVE=0`` forces it everywhere, with torch's numerics.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
import weakref
from dataclasses import dataclass
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
NATIVE_MATH = {SOFT_BOUNDS: 3, EXPONENTIAL: 4}  # ... with its own expm1, exp and log (numerics = "native") ...
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
                ("now", ctypes.c_float), ("seed", ctypes.c_uint64), ("draw_c2c", ctypes.c_int),
                ("draw_write", ctypes.c_int)]


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
    lib.xb_interp.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p]
    lib.xb_interp.restype = None
    lib.xb_nonzero.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.xb_nonzero.restype = ctypes.c_int64
    lib.xb_round.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_float]
    lib.xb_math.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.xb_visible.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_void_p]
    lib.xb_uniforms.argtypes = [ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p]
    lib.xb_normals.argtypes = [ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p]
    for name in ("xb_round", "xb_uniforms", "xb_normals", "xb_math", "xb_visible"):
        getattr(lib, name).restype = None
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


def available(device: torch.device, dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernel, for tensors of this torch device and dtype: float32 on the CPU, with the kernel built and not
    switched off (``HWTOOLKIT_CROSSBAR_NATIVE=0``: torch does everything)."""
    switch = os.environ.get(SWITCH, "1")
    if switch not in ("0", "1"):
        raise ValueError(f"{SWITCH} must be 0 (the torch path) or 1 (the fused kernel where it runs), not {switch!r}")
    if switch == "0" or device.type != "cpu" or dtype != torch.float32:
        return None
    return library()


def usable(model: ResponseModel, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether writes of this model on this torch device and dtype take the kernel."""
    return model_code(model) is not None and available(device, dtype) is not None


@dataclass(frozen=True)
class Drawn:
    """Normals that the kernel draws itself (numerics = "native"): the seed and the noises' scales (0: that noise
    off)."""

    seed: int
    c2c_std: float
    write_std: float


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
            noise: tuple[torch.Tensor | None, float, torch.Tensor | None, float] | Drawn, now: float,
            buffer: Callable[[str, int], torch.Tensor]) -> int:
    """Give one polarity's devices (all, or the flat indices ``idx``) their pulses as ``PairArray._send`` and
    ``_respond`` do; returns how many of the pulsed ones ended clipped at a bound.

    ``n`` and ``d``: the pulse counts and requested changes, per entry of ``idx``, or per device if ``masked`` (then
    ``idx`` lists the devices with a count); ``polarity`` +1 for the positive devices, -1 for the negative ones;
    ``noise``: the cycle-to-cycle and the write noise's standard normals per entry (None: none) and their scales,
    drawn by torch in the tensor path's order, whose exp, expm1 and log the kernel then uses too (numerics =
    "torch"), or ``Drawn``: the kernel draws the normals from a seed and computes those functions itself (numerics =
    "native"); ``buffer(name, size)``: a scratch buffer of ``size`` floats.
    """
    c = _expanded(dev.constants)
    code = model_code(model)
    numel = dev.g.numel()
    k = numel if idx is None else idx.numel()
    layout = DENSE if idx is None else MASKED if masked else SPARSE
    drawn = noise if isinstance(noise, Drawn) else None
    c2c_normal, c2c_std, write_normal, write_std = (None, drawn.c2c_std, None, drawn.write_std) if drawn else noise
    w = _Write(k=k, numel=numel, layout=layout, idx=_pointer(idx), g=_pointer(dev.g), n=_pointer(n), d=_pointer(d),
               polarity=polarity, one_sided=one_sided, dw=dw, gain_up=_pointer(c["gain"][0]),
               gain_down=_pointer(c["gain"][1]), clip_lo=_pointer(c["clip_lo"][0]), clip_hi=_pointer(c["clip_hi"][0]),
               free_=_pointer(c["free"][0]), model=code, c2c_std=c2c_std, write_std=write_std,
               offset=_pointer(dev.offset), pulses=_pointer(dev.pulses), written_at=_pointer(dev.written_at), now=now)
    if code == SOFT_BOUNDS:
        (w.a_up, w.a_down), (w.b_up, w.b_down) = (map(_pointer, c[key]) for key in ("target", "rate"))
    elif code == EXPONENTIAL:
        (w.a_up, w.a_down), (w.b_up, w.b_down) = (map(_pointer, c[key]) for key in ("mid", "half"))
        w.gamma_up, w.gamma_down = model.gamma_up, model.gamma_down
    if drawn:
        w.model = NATIVE_MATH.get(code, code)
        draws = (drawn.c2c_std != 0, dev.offset is not None)
        if layout == MASKED and any(draws):  # drawn for the entries only, fewer than the devices the pass runs over
            c2c_normal, write_normal = buffer("native.c2c_drawn", k), buffer("native.write_drawn", k)
            normals(lib, drawn.seed, c2c_normal, write_normal)
            c2c_normal, write_normal = (v if on else None for v, on in zip((c2c_normal, write_normal), draws))
        else:
            w.seed, (w.draw_c2c, w.draw_write) = drawn.seed, draws
    else:
        _torch_transcendentals(lib, w, code, idx, buffer)
    for name, values in (("c2c_normal", c2c_normal), ("write_normal", write_normal)):
        if values is not None and layout == MASKED:  # the finishing pass reads them at their devices
            at_devices = buffer(f"native.{name}_at_devices", numel)
            lib.xb_expand(k, idx.data_ptr(), values.data_ptr(), at_devices.data_ptr())
            values = at_devices
        setattr(w, name, _pointer(values))
    saturated = int(lib.xb_finish(ctypes.byref(w)))
    if saturated < 0:
        raise RuntimeError(f"the write kernel has no case for model {w.model}, layout {layout}")
    return saturated


def _torch_transcendentals(lib: ctypes.CDLL, w: _Write, code: int, idx: torch.Tensor | None,
                           buffer: Callable[[str, int], torch.Tensor]) -> None:
    """Compute the model's transcendentals with torch, on the same values in the same order as the tensor path:
    the kernel writes their arguments (soft bounds: expm1's; the exponential step: exp's and the term added before
    the log), torch transforms them in place, and ``w.work`` then points at the results for xb_finish."""
    if code not in (SOFT_BOUNDS, EXPONENTIAL):
        return
    k, numel, layout = w.k, w.numel, w.layout
    args = [buffer("native.work", k)] + ([buffer("native.term", k)] if code == EXPONENTIAL else [])
    spread = layout == MASKED  # the arguments computed for every device, transformed for the entries'
    computed = [buffer(f"native.arg{i}_at_devices", numel) for i in range(len(args))] if spread else args
    w.work, w.term = _pointer(computed[0]), _pointer(computed[-1])
    if spread:
        w.k, w.layout = numel, DENSE
    (lib.xb_soft_arg if code == SOFT_BOUNDS else lib.xb_exp_args)(ctypes.byref(w))
    if spread:
        for at_devices, entries in zip(computed, args):
            lib.xb_compact(k, idx.data_ptr(), at_devices.data_ptr(), entries.data_ptr())
    if code == SOFT_BOUNDS:
        args[0].expm1_()
    else:
        args[0].exp_().add_(args[1]).log_()
    w.k, w.layout = k, layout
    if spread:  # the finishing pass reads the result at the devices
        lib.xb_expand(k, idx.data_ptr(), args[0].data_ptr(), computed[0].data_ptr())
    else:
        w.work = _pointer(args[0])


def round_stochastic(lib: ctypes.CDLL, x: torch.Tensor, seed: int, cap: int) -> torch.Tensor:
    """``x`` (pulses, contiguous float32) rounded in place to ``min(floor(x + u), cap)`` with u ~ U[0, 1) drawn by
    the kernel from ``seed`` (no cap where ``cap`` is 0)."""
    lib.xb_round(x.numel(), _pointer(x), seed, float(cap))
    return x


def normals(lib: ctypes.CDLL, seed: int, a: torch.Tensor, b: torch.Tensor) -> None:
    """Fill ``a`` and ``b`` (contiguous float32, as many elements each) with the standard normal pairs that the
    kernel draws from ``seed`` for entries 0, 1, ... of a write."""
    if a.numel() != b.numel():
        raise ValueError(f"normal pairs need two arrays of one size, not {a.numel()} and {b.numel()}")
    lib.xb_normals(a.numel(), seed, _pointer(a), _pointer(b))


def randn(lib: ctypes.CDLL, seed: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """A fresh float32 tensor of standard normals drawn by the kernel from ``seed`` (its pairs' two halves)."""
    n = math.prod(shape)
    pairs = (n + 1) // 2
    out = torch.empty(2 * pairs, dtype=torch.float32)
    lib.xb_normals(pairs, seed, out.data_ptr(), out[pairs:].data_ptr())
    return out[:n].view(shape)


def visible(lib: ctypes.CDLL, dev: Devices, now: float, t0: float, out: torch.Tensor | None) -> torch.Tensor:
    """``Devices.visible`` under drift with the kernel's pow: (g + offset) x ((now - written + t0) / t0)^-nu."""
    out = torch.empty_like(dev.g) if out is None else out
    nu = (dev.neg_nu if torch.is_tensor(dev.neg_nu) else torch.tensor([dev.neg_nu])).to(torch.float32).contiguous()
    per_device = nu.numel() > 1 or dev.g.numel() == 1
    if nu.numel() not in (1, dev.g.numel()):
        raise ValueError(f"a drift exponent of {nu.numel()} values for {dev.g.numel()} devices")
    lib.xb_visible(dev.g.numel(), _pointer(dev.g), _pointer(dev.offset), _pointer(dev.written_at),
                   _pointer(nu), per_device, now, t0, _pointer(out))
    return out


def generator(numerics: str, device: torch.device, dtype: torch.dtype) -> ctypes.CDLL | None:
    """The kernel, where it draws the random numbers and computes the transcendentals: ``crossbar.numerics =
    "native"``, on the CPU in float32, with a kernel built and not switched off (None: torch does)."""
    return available(device, dtype) if numerics == "native" else None


def seed(gen: torch.Generator) -> int:
    """A 63-bit seed for the kernel's generator, drawn from ``gen`` (so runs and resumed checkpoints repeat)."""
    return int(torch.randint(2**63 - 1, (1,), generator=gen, dtype=torch.int64, device=gen.device))


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor | None:
    """``response.interp`` in one pass of the kernel, bit for bit (the same float32 operations in the same order), for
    float32 CPU tensors where it is built; None elsewhere. Torch's searchsorted alone takes about 60 ns a value here."""
    lib = available(x.device, x.dtype) if xp.dtype == fp.dtype == x.dtype and xp.numel() >= 2 else None
    if lib is None:
        return None
    x, xp, fp = x.contiguous(), xp.contiguous(), fp.contiguous()
    out = torch.empty_like(x)
    lib.xb_interp(x.numel(), x.data_ptr(), xp.numel(), xp.data_ptr(), fp.data_ptr(), out.data_ptr())
    return out


def nonzero(lib: ctypes.CDLL, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The flat indices of ``x``'s nonzero entries, ascending (what ``torch.nonzero`` gives), in the first elements of
    ``out`` (int64, at least as long as ``x``)."""
    if out.dtype != torch.int64 or out.numel() < x.numel():
        raise ValueError(f"nonzero needs an int64 buffer of at least {x.numel()} elements")
    return out[:lib.xb_nonzero(x.numel(), _pointer(x), _pointer(out))]


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
