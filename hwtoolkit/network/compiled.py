"""Relaxation without per-kernel launch overhead: the step loop compiled by Inductor and/or captured as CUDA graphs.

At batch 128 one relaxation step is a few dozen small kernels, and a phase is hundreds of steps, so a GPU
spends its time launching. ``CompiledRelaxer`` runs the same dynamics as ``dynamics.relax`` in chunks of
``chunk`` steps, each chunk one compiled and/or captured program:

* ``"eager"``: plain ``dynamics.relax`` (the baseline; every ``reads`` and drive it accepts).
* ``"inductor"``: the chunk compiled by ``torch.compile(dynamic=False, fullgraph=True)``. Inductor fuses the
  elementwise work of a step (bias, feedback sum, nudge, the clamp or sigmoid of rho, the leaky mix, the CE
  softmax) into a few kernels around the matmuls and convolutions. Runs on CPU and GPU.
* ``"cuda_graph"``: the eager chunk captured into a ``torch.cuda.CUDAGraph`` on static buffers and replayed
  ``steps // chunk`` times (plus one graph for the remainder): one launch per chunk, no fusion. CUDA only.
* ``"inductor_cuda_graph"``: the Inductor-compiled chunk captured the same way: fused kernels and one launch
  per chunk. CUDA only. (A manual capture rather than ``mode="reduce-overhead"``: the graph's inputs and
  outputs are then buffers this module owns, and replaying it many times in a row is safe.)

States match ``dynamics.relax`` up to float rounding (exactly for ``"eager"``). With ``stop_tolerance > 0``
convergence is checked once per chunk (one host sync per chunk rather than per step), so a phase may run up
to ``chunk - 1`` steps past the step where ``dynamics.relax`` stops; ``Relaxation.steps`` is then a multiple
of ``chunk`` (or ``steps``), and the residual is that of the last single step, as ``dynamics.finish`` has it.
The states are not differentiable (the phases run under ``torch.no_grad``).

What a compiled chunk or a graph depends on is its cache key: chunk length, nudged or free; shape, strides,
dtype, device and ``requires_grad`` of the drive, states, targets and parameters (the batch size among them);
the autocast and TF32 switches in force; and for a graph the parameters' addresses, since it reads them in
place: updates by ``add_`` are seen, new parameter tensors are recaptured (and the graphs of the old ones
dropped). ``beta`` is a 0-dim tensor input (a static buffer for graphs), so the ``+beta`` and ``-beta``
phases share one compiled chunk and one graph. Each chunk is its own ``torch.compile`` with
``recompile_limit=1``, so a guard this key misses raises rather than silently recompiling.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import torch

from . import dynamics
from . import layers as L
from .dynamics import Relaxation
from .spec import NetworkSpec

MODES = {
    "eager": "plain dynamics.relax",
    "inductor": "chunks of steps compiled by torch.compile (fused elementwise kernels)",
    "cuda_graph": "chunks of eager steps captured as CUDA graphs (one launch per chunk)",
    "inductor_cuda_graph": "chunks compiled by torch.compile, then captured as CUDA graphs",
}
DEFAULT_CHUNK = 10
_WARMUP = 2  # eager runs on a side stream before a capture (cuBLAS/cuDNN workspaces, Inductor's first call)

Params = dict[str, torch.Tensor]
Chunk = Callable[..., tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]]


def _chunk(spec: NetworkSpec, length: int, nudged: bool, params: Params, drive: torch.Tensor,
           states: Sequence[torch.Tensor], beta: torch.Tensor,
           y: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """``length`` steps: the last states, the states one step before, and the last step's largest move."""
    previous = list(states)
    current = previous
    for _ in range(length):
        previous, current = current, dynamics.step(spec, params, drive, current, beta, y, nudged=nudged)
    moved = torch.stack([(s - p).abs().amax() for s, p in zip(current, previous)]).amax()
    return current, previous, moved


def _schedule(steps: int, chunk: int) -> Iterator[int]:
    """Chunk lengths that add up to ``steps``: full chunks, then the remainder."""
    yield from [chunk] * (steps // chunk)
    if steps % chunk:
        yield steps % chunk


def _layout(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad)


def _layouts(params: Params, drive: torch.Tensor, states: Sequence[torch.Tensor], y: torch.Tensor | None) -> tuple:
    """Everything about the inputs and the global switches that a compiled chunk specialises on (its guards).

    The switches (autocast, TF32, matmul precision, threads) are baked into a compile and into a capture:
    a relaxation under ``network.precision.compute_precision`` gets its own chunks and graphs.
    """
    kind = drive.device.type
    switches = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind), torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision(),
                torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    return (tuple((n, _layout(p)) for n, p in params.items()), _layout(drive),
            tuple(_layout(s) for s in states), _layout(y), switches)


class _GraphPhase:
    """Static buffers for one phase layout and the CUDA graphs captured on them, one per chunk length.

    Each graph runs a chunk from ``states`` and writes its result back into ``states`` (and the states one
    step earlier into ``previous``), so replaying it again continues the phase. The parameters are read in
    place from the tensors held here.
    """

    def __init__(self, make_chunk: Callable[[int, tuple], Chunk], params: Params, drive: torch.Tensor,
                 states: Sequence[torch.Tensor], y: torch.Tensor | None) -> None:
        self.make_chunk = make_chunk
        self.params = params
        self.drive = torch.empty_like(drive)
        self.states = [torch.empty_like(s) for s in states]
        self.previous = [torch.empty_like(s) for s in states]
        self.beta = drive.new_zeros(())
        self.y = None if y is None else torch.empty_like(y)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.moved: dict[int, torch.Tensor] = {}
        self.pool = None  # one memory pool for the graphs of a phase: they are replayed one at a time

    def load(self, drive: torch.Tensor, states: Sequence[torch.Tensor], beta: float, y: torch.Tensor | None) -> None:
        self.drive.copy_(drive)
        for buffer, s in zip(self.states, states):
            buffer.copy_(s)
        self.beta.fill_(beta)
        if self.y is not None:
            self.y.copy_(y)

    def advance(self, length: int) -> torch.Tensor:
        """Run ``length`` more steps on the buffers; the last step's largest move (on the device)."""
        if length not in self.graphs:
            self._capture(length)
        self.graphs[length].replay()
        return self.moved[length]

    def _capture(self, length: int) -> None:
        args = (self.params, self.drive, self.states, self.beta, self.y)
        chunk = self.make_chunk(length, _layouts(self.params, self.drive, self.states, self.y))
        side = torch.cuda.Stream(self.drive.device)
        side.wait_stream(torch.cuda.current_stream(self.drive.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP):
                chunk(*args)  # pure: the buffers are not written
        torch.cuda.current_stream(self.drive.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            current, previous, moved = chunk(*args)
            for buffer, s in zip(self.previous, previous):
                buffer.copy_(s)
            for buffer, s in zip(self.states, current):
                buffer.copy_(s)
        self.graphs[length], self.moved[length] = graph, moved


class CompiledRelaxer:
    """Runs the phases of one network with a given ``mode`` (see ``MODES``), caching what it compiles."""

    def __init__(self, spec: NetworkSpec, mode: str, chunk: int = DEFAULT_CHUNK) -> None:
        if mode not in MODES:
            raise ValueError(f"relaxation mode = {mode!r} is not known; valid: {list(MODES)}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk = {chunk!r} is invalid: expected an integer >= 1 (steps per compiled chunk)")
        self.spec, self.mode, self.chunk = spec, mode, chunk
        self._compiled: dict[tuple, Chunk] = {}
        self._phases: dict[tuple, _GraphPhase] = {}

    @property
    def cache_size(self) -> int:
        """Compiled chunks plus captured graphs held (to check that a change did not recompile)."""
        return len(self._compiled) + sum(len(p.graphs) for p in self._phases.values())

    def clear(self) -> None:
        """Drop every compiled chunk and graph (and the memory the graphs hold)."""
        self._compiled.clear()
        self._phases.clear()

    def relax(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, steps: int, beta: float = 0.0,
              y: torch.Tensor | None = None, init: Sequence[torch.Tensor] | None = None,
              drive: dynamics.Drive | None = None, stop_tolerance: float = 0.0,
              reads: L.Reads = L.EXACT) -> Relaxation:
        """One phase, as ``dynamics.relax`` (same arguments), but stopping early only at a chunk's end."""
        if self.mode == "eager":
            return dynamics.relax(self.spec, params, x, steps, beta, y, init, drive, stop_tolerance, reads)
        self._check(x, steps, beta, y, drive, stop_tolerance, reads)
        # detached views (same storage, so in-place updates are seen): autocast caches casts of leaves that
        # require grad, and a graph would read such a cached copy forever
        params = {n: p.detach() for n, p in params.items()}
        with torch.no_grad():
            drive = dynamics.input_drive(self.spec, params, x) if drive is None else drive
            states = list(init) if init is not None else dynamics.zero_states(self.spec, drive.shape[0], drive)
            nudged = beta != 0.0
            y = y if nudged else None
            if self.mode == "inductor":
                states, previous, done = self._run_compiled(params, drive, states, nudged, beta, y, steps,
                                                            stop_tolerance)
            else:
                states, previous, done = self._run_graphs(params, drive, states, nudged, beta, y, steps,
                                                          stop_tolerance)
            return dynamics.finish(self.spec, params, states, previous, done)

    def _check(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, drive: object,
               stop_tolerance: float, reads: L.Reads) -> None:
        dynamics.check_phase(steps, beta, y, stop_tolerance)
        if reads != L.EXACT:
            raise ValueError(f"reads = {reads!r} is not supported by mode {self.mode!r}: a compiled relaxation "
                             "reads exactly (device noise and quantized reads need mode 'eager')")
        if callable(drive):
            raise ValueError(f"a drive read afresh every step ({drive!r}) is not supported by mode {self.mode!r}: "
                             "pass a tensor, or use mode 'eager'")
        device = (x if drive is None else drive).device
        if self.mode != "inductor" and device.type != "cuda":
            raise ValueError(f"mode {self.mode!r} needs CUDA tensors; the input is on {device} "
                             "(use mode 'inductor' or 'eager' there)")

    def _compiled_chunk(self, length: int, nudged: bool, layouts: tuple) -> Chunk:
        """The chunk of ``length`` steps, compiled once per cache key (a recompile would raise)."""
        key = (length, nudged, layouts)
        if key not in self._compiled:
            spec = self.spec

            def chunk(params: Params, drive: torch.Tensor, states: Sequence[torch.Tensor], beta: torch.Tensor,
                      y: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
                return _chunk(spec, length, nudged, params, drive, states, beta, y)

            self._compiled[key] = torch.compile(chunk, dynamic=False, fullgraph=True, recompile_limit=1,
                                                isolate_recompiles=True)
        return self._compiled[key]

    def _run_compiled(self, params: Params, drive: torch.Tensor, states: list[torch.Tensor], nudged: bool,
                      beta: float, y: torch.Tensor | None, steps: int, stop_tolerance: float
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        beta_t = drive.new_full((), beta)
        previous, done = states, 0
        for length in _schedule(steps, self.chunk):
            chunk = self._compiled_chunk(length, nudged, _layouts(params, drive, states, y))
            states, previous, moved = chunk(params, drive, states, beta_t, y)
            done += length
            if stop_tolerance and moved.item() <= stop_tolerance:
                break
        return list(states), list(previous), done

    def _graph_phase(self, params: Params, drive: torch.Tensor, states: Sequence[torch.Tensor], nudged: bool,
                     y: torch.Tensor | None) -> _GraphPhase:
        """The buffers and graphs for this layout; graphs of other parameter tensors are dropped."""
        addresses = tuple(p.data_ptr() for p in params.values())
        key = (nudged, _layouts(params, drive, states, y), addresses)
        if key not in self._phases:
            self._phases = {k: v for k, v in self._phases.items() if k[2] == addresses}
            if self.mode == "inductor_cuda_graph":
                def make(length: int, layouts: tuple) -> Chunk:
                    return self._compiled_chunk(length, nudged, layouts)
            else:
                spec = self.spec

                def make(length: int, layouts: tuple) -> Chunk:
                    return lambda *args: _chunk(spec, length, nudged, *args)
            self._phases[key] = _GraphPhase(make, params, drive, states, y)
        return self._phases[key]

    def _run_graphs(self, params: Params, drive: torch.Tensor, states: list[torch.Tensor], nudged: bool,
                    beta: float, y: torch.Tensor | None, steps: int, stop_tolerance: float
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        with torch.cuda.device(drive.device):
            phase = self._graph_phase(params, drive, states, nudged, y)
            phase.load(drive, states, beta, y)
            done = 0
            for length in _schedule(steps, self.chunk):
                moved = phase.advance(length)
                done += length
                if stop_tolerance and moved.item() <= stop_tolerance:
                    break
            return [s.clone() for s in phase.states], phase.previous, done  # previous: only read by finish
