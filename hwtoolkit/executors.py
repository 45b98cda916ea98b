"""Executors: run independent tasks (sweep points, tuning workers) in this process or as Ray tasks, with retries.

``run_tasks(fn, args, spec)`` calls ``fn(arg)`` for every argument and yields one ``Outcome`` per task as it ends:
its result, or its last error after ``spec.retries`` further attempts. With ``kind = "ray"`` every call is a Ray
task holding ``cpus_per_task`` CPUs whose torch threads are set to those CPUs; a task whose worker dies (killed,
out of memory, node lost) or that raises is submitted again by the driver, so a retry is counted and logged here
rather than hidden inside Ray. ``fn`` must be a module-level function and its arguments picklable.

Without ``address`` a local Ray instance is started (no dashboard, a small object store, usage statistics off)
and shut down when the tasks end; with one, the command joins that cluster and leaves it running.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

KINDS = ("local", "ray")
MAX_RETRIES = 100
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # tasks return small rows; Ray's minimum is 75 MiB


class ExecutorError(ValueError):
    """The executor cannot be used as asked (unknown kind, bad address, bad counts)."""


@dataclass(frozen=True)
class ExecutorSpec:
    """Where tasks run: ``local`` (one after the other, in this process) or ``ray`` (tasks on a Ray instance)."""

    kind: str = "local"
    address: str | None = None  # host:port of a running Ray cluster's head, or "auto"; None: start a local one
    cpus_per_task: int = 1
    workers: int | None = None  # tasks at once; None: as many as the CPUs allow
    retries: int = 2  # further attempts of a task whose worker died or that raised

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ExecutorError(f"--executor {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "local" and (self.address is not None or self.workers is not None):
            raise ExecutorError("--address and --workers need --executor ray")
        if not 1 <= self.cpus_per_task <= 1024:
            raise ExecutorError(f"--cpus-per-point {self.cpus_per_task}: expected an integer from 1 to 1024")
        if self.workers is not None and not 1 <= self.workers <= 100_000:
            raise ExecutorError(f"--workers {self.workers}: expected an integer from 1 to 100000")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ExecutorError(f"--retries {self.retries}: expected an integer from 0 to {MAX_RETRIES}")
        if self.address is not None:
            check_address(self.address)


def check_address(address: str) -> None:
    """``auto`` or ``host:port`` where something listens; anything else is refused before Ray is started."""
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"--address {address!r}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.1:6379) "
                            f"or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as e:
        raise ExecutorError(f"--address {address!r}: no Ray head node answers there ({e.strerror or e})") from None


@dataclass(frozen=True)
class Outcome:
    """How one task ended: its result, or the error of its last attempt."""

    index: int
    result: Any = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Progress:
    """Counts shown while tasks run."""

    total: int
    done: int
    running: int
    failed: int

    def describe(self) -> str:
        return f"{self.done} done, {self.running} running, {self.failed} failed of {self.total}"


def _error_text(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}".strip()


def run_tasks(fn: Callable[[Any], Any], args: Sequence[Any], spec: ExecutorSpec,
              on_progress: Callable[[Progress], None] = lambda p: None,
              log: Callable[[str], None] = print, names: Sequence[str] | None = None) -> Iterator[Outcome]:
    """``fn(arg)`` for every argument, on the executor ``spec``; one ``Outcome`` per task, in the order they end."""
    spec.validate()
    names = list(names) if names is not None else [f"task {i}" for i in range(len(args))]
    if not args:  # nothing left to run (a resumed study): no Ray instance is started
        return
    if spec.kind == "local":
        yield from _run_local(fn, args, spec, on_progress, log, names)
    else:
        with ray_session(spec):
            yield from _run_ray(fn, args, spec, on_progress, log, names)


def _run_local(fn, args, spec, on_progress, log, names) -> Iterator[Outcome]:
    done = failed = 0
    for i, arg in enumerate(args):
        on_progress(Progress(len(args), done, 1, failed))
        for attempt in range(1, spec.retries + 2):
            try:
                result = fn(arg)
            except Exception as e:  # KeyboardInterrupt and SIGTERM end the command
                error = _error_text(e)
                log(f"[{names[i]}] attempt {attempt} failed: {error}")
                if attempt <= spec.retries:
                    continue
                failed += 1
                yield Outcome(i, error=error, attempts=attempt)
            else:
                done += 1
                yield Outcome(i, result=result, attempts=attempt)
            break
    on_progress(Progress(len(args), done, 0, failed))


def _call_with_threads(fn: Callable[[Any], Any], arg: Any, threads: int) -> Any:
    """The body of every Ray task: torch uses the CPUs the task was given, then ``fn`` runs."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return fn(arg)


@contextmanager
def ray_session(spec: ExecutorSpec) -> Iterator[None]:
    """Join the cluster at ``spec.address`` or start a local instance (shut down on leaving); no network else."""
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage over the network
    import ray

    if ray.is_initialized():  # the caller manages its own session (a notebook, a benchmark)
        yield
        return
    common = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    try:
        if spec.address is not None:
            ray.init(address=spec.address, **common)
        else:
            cpus = spec.workers * spec.cpus_per_task if spec.workers else None
            ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **common)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"join the Ray cluster at {spec.address!r}" if spec.address else "start a local Ray instance"
        raise ExecutorError(f"cannot {where}: {_error_text(e)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _run_ray(fn, args, spec, on_progress, log, names) -> Iterator[Outcome]:
    import ray
    from ray.exceptions import RayTaskError

    task = ray.remote(_call_with_threads).options(num_cpus=spec.cpus_per_task, max_retries=0,
                                                  retry_exceptions=False)
    limit = spec.workers or len(args)  # Ray queues the rest by resources; --workers bounds them on a shared cluster
    pending = list(range(len(args)))
    attempts = [0] * len(args)
    running: dict[Any, int] = {}
    done = failed = 0
    try:
        while pending or running:
            while pending and len(running) < limit:
                i = pending.pop(0)
                attempts[i] += 1
                running[task.remote(fn, args[i], spec.cpus_per_task)] = i
            on_progress(Progress(len(args), done, len(running), failed))
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                i = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the task raised: its own exception, not Ray's wrapper
                    error = _error_text(e.cause if e.cause is not None else e)
                except ray.exceptions.RayError as e:  # the worker or its node died
                    error = f"worker died: {_error_text(e)}"
                else:
                    done += 1
                    yield Outcome(i, result=result, attempts=attempts[i])
                    continue
                log(f"[{names[i]}] attempt {attempts[i]} failed: {error}")
                if attempts[i] <= spec.retries:
                    pending.insert(0, i)  # resumes from its last checkpoint
                else:
                    failed += 1
                    yield Outcome(i, error=error, attempts=attempts[i])
        on_progress(Progress(len(args), done, 0, failed))
    finally:
        for ref in running:  # an interrupted command leaves no task behind
            ray.cancel(ref, force=True)

