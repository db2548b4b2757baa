"""Run one job per tensor pair, largest first: in threads on this machine (its CPUs or every GPU) or as Ray tasks.

Two executors share one contract, ``run(jobs, work, checkpoints, args, progress)`` →
``{pair.module: work(pair, *checkpoints, device, *args)}``, with a progress bar and the first error winning:

* :class:`LocalExecutor` (``--executor local``): worker threads on this machine, each pinned to one device
  (``cpu``, or ``cuda:i``: with ``--device cuda`` and several GPUs visible, one thread per GPU). With more
  than one thread every BLAS call is single-threaded (threadpoolctl), which on 2 cores is ~1.6x faster
  than one multi-threaded call at a time and makes the results independent of the thread count.
* :class:`RayExecutor` (``--executor ray``): one Ray task per pair (``num_gpus=1`` when the device is
  ``cuda`` and the cluster has GPUs). A task re-opens the checkpoints *by path* in its worker process
  (cached per process and run) and reads only its own tensors: no array and no file descriptor travels
  through Ray, so every node must see the checkpoints at the same path (a shared filesystem). Inside a
  task BLAS is single-threaded as in a multi-threaded local run, so the results are bit-identical to
  ``LocalExecutor`` with more than one worker. Tasks of a lost worker are retried (``max_retries``).

``work`` must be a module-level function (Ray pickles it by reference) and ``args`` small picklable values
(options, plans: never arrays).  ``ray`` is imported only by :class:`RayExecutor`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RankscopeError
from ..io.checkpoints import MEMORY_FORMAT, Checkpoint, open_checkpoint
from ..options import resolve_device
from .align import TensorPair

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'rankscope[ray]'"
MAX_RETRIES = 3
"""Ray re-runs the task of a worker (or node) that died this many times; a RankscopeError is never retried."""

Work = Callable[..., Any]
"""``work(pair, *checkpoints, device, *args)``: the result of one pair (picklable for Ray)."""

_DEFAULTS: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar("rankscope_executor",
                                                                                   default=("local", None))


def cost(pair: TensorPair) -> int:
    """The ordering key of a job: ``rows · cols · min(rows, cols)`` (the flops of its spectrum, up to a constant)."""
    return pair.rows * pair.cols * min(pair.rows, pair.cols)


def largest_first(jobs: Sequence[TensorPair]) -> list[TensorPair]:
    """Jobs by decreasing :func:`cost` (stable: equal costs keep their order)."""
    return sorted(jobs, key=lambda p: -cost(p))


def _bar(total: int, progress: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="module", desc=desc, disable=None if progress else True, file=sys.stderr,
                leave=False)


@contextlib.contextmanager
def single_threaded_blas(enabled: bool = True) -> Iterator[None]:
    """Every BLAS of the process limited to one thread while inside (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def _on_device(device: str) -> Iterator[None]:
    """A CUDA worker thread: its device is the current one (``cuda:i``) and its kernels go to a stream of its own,
    so that two threads on one GPU overlap (every result is copied back, which waits for its stream)."""
    if not re.fullmatch(r"cuda(:\d+)?", device):
        yield
        return
    import torch

    with torch.cuda.device(torch.device(device)), torch.cuda.stream(torch.cuda.Stream(torch.device(device))):
        yield


# --------------------------------------------------------------------------------------------------
# threads on this machine
# --------------------------------------------------------------------------------------------------


def run_threads(jobs: Sequence[TensorPair], call: Callable[[TensorPair, str], Any], slots: Sequence[str],
                progress: bool, desc: str = "spectra") -> tuple[dict[str, Any], dict[str, int]]:
    """``{pair.module: call(pair, device)}`` over one thread per entry of ``slots`` (its device), largest first.

    Threads take the next job from one queue, so a device that finishes early takes the next largest. Returns
    the results and, per module, the index of the slot that ran it. The first error stops the others (running
    jobs finish) and is raised.
    """
    order = largest_first(jobs)
    todo: queue.SimpleQueue[TensorPair] = queue.SimpleQueue()
    for pair in order:
        todo.put(pair)
    done: queue.SimpleQueue[tuple[TensorPair, int, Any, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def worker(slot: int, device: str) -> None:
        with _on_device(device):
            while not stop.is_set():
                try:
                    pair = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((pair, slot, call(pair, device), None))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    done.put((pair, slot, None, exc))
                    return

    results: dict[str, Any] = {}
    where: dict[str, int] = {}
    bar = _bar(len(order), progress, desc)
    if len(slots) == 1:  # in this thread: tracebacks, debuggers and Ctrl-C as in a plain loop
        with _on_device(slots[0]):
            for pair in order:
                results[pair.module] = call(pair, slots[0])
                where[pair.module] = 0
                bar.update(1)
        bar.close()
        return results, where
    threads = [threading.Thread(target=worker, args=(i, d), daemon=True, name=f"rankscope-{i}-{d}")
               for i, d in enumerate(slots)]
    for t in threads:
        t.start()
    try:
        for _ in order:
            while True:
                try:
                    pair, slot, value, exc = done.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
            results[pair.module], where[pair.module] = value, slot
            bar.update(1)
    finally:
        stop.set()
        bar.close()
        for t in threads:
            t.join()
    return results, where


def local_devices(device: str) -> list[str]:
    """The devices of a local run: ``cuda`` with several GPUs visible is each of them (``cuda:0`` …)."""
    if device != "cuda":
        return [device]
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count > 1 else ["cuda"]


@dataclass
class LocalExecutor:
    """Worker threads on this machine; thread ``i`` runs its jobs on ``devices[i % len(devices)]``.

    Attributes:
        devices: where the jobs run (``("cpu",)``; ``("cuda:0", "cuda:1")`` for two GPUs).
        workers: threads (default: one per device).
        assignment: after :meth:`run`, module → index of the thread that ran it.
    """

    devices: tuple[str, ...] = ("cpu",)
    workers: int | None = None
    assignment: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.devices = tuple(self.devices)
        if not self.devices:
            raise RankscopeError("the local executor needs at least one device")
        self.workers = self.workers or len(self.devices)
        if self.workers < 1:
            raise RankscopeError(f"--workers: must be at least 1, got {self.workers}")

    @property
    def device(self) -> str:
        """The device the run was asked for (the first one; ``cuda`` for several GPUs)."""
        return "cuda" if len(set(self.devices)) > 1 and all(d.startswith("cuda") for d in self.devices) \
            else self.devices[0]

    @property
    def slots(self) -> list[str]:
        """The device of every worker thread."""
        return [self.devices[i % len(self.devices)] for i in range(self.workers or 1)]

    def run(self, jobs: Sequence[TensorPair], work: Work, checkpoints: Sequence[Checkpoint], args: tuple = (),
            progress: bool = False, desc: str = "spectra") -> dict[str, Any]:
        """``{pair.module: work(pair, *checkpoints, device, *args)}`` for every job (see module docstring)."""
        slots = self.slots

        def call(pair: TensorPair, device: str) -> Any:
            return work(pair, *checkpoints, device, *args)

        with single_threaded_blas(len(slots) > 1):
            results, self.assignment = run_threads(jobs, call, slots, progress, desc)
        return results

    def describe(self) -> dict[str, Any]:
        """The executor as ``run.json`` records it."""
        return {"name": "local", "devices": list(dict.fromkeys(self.slots)), "workers": len(self.slots)}


# --------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`RankscopeError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RankscopeError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from exc
    return ray


_OPENED: dict[str, Any] = {"run": None, "checkpoints": {}}
_OPENED_LOCK = threading.Lock()


def node_name() -> str:
    """This process' Ray node id and host name, for messages (``Ray node ? (host)`` outside Ray)."""
    import socket

    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - only for the message
        node_id = "?"
    return f"Ray node {node_id} ({socket.gethostname()})"


def worker_checkpoint(path: str, run: str) -> Checkpoint:
    """The checkpoint at ``path`` opened in this worker process, once per run (``run`` is the run's id)."""
    with _OPENED_LOCK:
        if _OPENED["run"] != run:  # a new run: what an earlier one opened may have changed on disk since
            for ckpt in _OPENED["checkpoints"].values():
                ckpt.close()
            _OPENED.update(run=run, checkpoints={})
        opened = _OPENED["checkpoints"]
        if path not in opened:
            if not Path(path).exists():
                raise RankscopeError(f"{path}: not found on {node_name()}; every Ray node must see the checkpoints at "
                                     f"the same path (a shared filesystem)")
            opened[path] = open_checkpoint(path)
        return opened[path]


def _check_same(pair: TensorPair, checkpoints: Sequence[Checkpoint], paths: Sequence[str]) -> None:
    """The worker's copy holds the pair's tensors with the shapes and dtypes the driver saw."""
    for info, ckpt, path in zip((pair.base, pair.finetuned), checkpoints, paths, strict=False):
        mine = ckpt.tensors.get(info.name)
        if mine is None or (mine.shape, mine.dtype) != (info.shape, info.dtype):
            seen = "missing" if mine is None else f"{mine.dtype} {list(mine.shape)}"
            raise RankscopeError(f"{path}: tensor '{info.name}' is {seen} on {node_name()} but {info.dtype} "
                                 f"{list(info.shape)} where rankscope was started: the nodes see different files")


def ray_task(common: tuple[Work, tuple], paths: tuple[str, ...], run: str, pair: TensorPair, device: str) -> Any:
    """One job inside a Ray worker: open the checkpoints by path (cached), then ``work`` with one BLAS thread."""
    work, args = common
    with single_threaded_blas():
        checkpoints = [worker_checkpoint(p, run) for p in paths]
        _check_same(pair, checkpoints, paths)
        return work(pair, *checkpoints, device, *args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class RayExecutor:
    """One Ray task per pair on the cluster at ``address`` (``None``: :func:`ray.init` starts or joins a local one).

    Attributes:
        address: ``--ray-address``: ``None`` (start or join a local cluster), ``auto`` (join the running one,
            else an error), ``HOST:PORT`` or ``ray://HOST:PORT``.
        device: ``cpu``, ``cuda`` (each task's one GPU, given by Ray: a ``cuda:N`` index is not used) or
            ``auto`` (``cuda`` when the cluster has GPUs).
        max_retries: re-runs of a task whose worker died.
        info: after :meth:`run`, what ``run.json`` records (address, nodes, CPUs, GPUs).
    """

    address: str | None = None
    device: str = "cpu"
    max_retries: int = MAX_RETRIES
    info: dict[str, Any] = field(default_factory=dict)

    workers = None
    """Ray schedules by resources; there is no thread count."""

    def _connect(self, ray: Any) -> bool:
        """Join (or start) the cluster; True when this call started the connection (and must end it)."""
        if ray.is_initialized():
            return False
        import logging

        try:
            ray.init(address=self.address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise RankscopeError(f"--ray-address {self.address or '(default: ray.init())'}: cannot connect to a Ray "
                                 f"cluster: {_first_line(exc)}") from exc
        return True

    def run(self, jobs: Sequence[TensorPair], work: Work, checkpoints: Sequence[Checkpoint], args: tuple = (),
            progress: bool = False, desc: str = "spectra") -> dict[str, Any]:
        """``{pair.module: work(pair, *reopened checkpoints, device, *args)}`` as Ray tasks, submitted largest first."""
        in_memory = [c.given for c in checkpoints if c.fmt == MEMORY_FORMAT]
        if in_memory:
            raise RankscopeError(f"--executor ray: {in_memory[0]} is a model in memory, but Ray tasks open the "
                                 f"checkpoints by path: save it (save_pretrained) and pass the folder, or use the "
                                 f"local executor")
        ray = import_ray()
        started = self._connect(ray)
        try:
            return self._run(ray, jobs, work, checkpoints, args, progress, desc)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, jobs: Sequence[TensorPair], work: Work, checkpoints: Sequence[Checkpoint], args: tuple,
             progress: bool, desc: str) -> dict[str, Any]:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        use_gpu = self.device == "cuda" or (self.device == "auto" and gpus > 0)
        if self.device == "cuda" and gpus <= 0:
            raise RankscopeError(f"--device {self.device} --executor ray: the Ray cluster has no GPU "
                                 f"({int(resources.get('CPU', 0))} CPUs); use --device cpu")
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.info = {"name": "ray", "address": self.address, "nodes": len(nodes),
                     "cpus": int(resources.get("CPU", 0)), "gpus": int(gpus),
                     "task_device": "cuda" if use_gpu else "cpu", "max_retries": self.max_retries}
        paths = tuple(str(Path(c.path).resolve()) for c in checkpoints)
        remote = ray.remote(ray_task).options(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=self.max_retries,
                                              retry_exceptions=False)
        common = ray.put((work, tuple(args)))
        run = uuid.uuid4().hex
        task_device = "cuda" if use_gpu else "cpu"
        pending = {remote.remote(common, paths, run, pair, task_device): pair for pair in largest_first(jobs)}
        results: dict[str, Any] = {}
        bar = _bar(len(pending), progress, desc)
        t0 = time.perf_counter()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    pair = pending.pop(ref)
                    results[pair.module] = self._get(ray, ref)
                    bar.update(1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=False)
            raise
        finally:
            bar.close()
        self.info["seconds"] = round(time.perf_counter() - t0, 3)
        return results

    @staticmethod
    def _get(ray: Any, ref: Any) -> Any:
        """``ray.get(ref)``, with a task's own error raised as itself (a RankscopeError stays one line)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise RankscopeError(f"a Ray task failed: {_first_line(exc)}") from exc
        except ray.exceptions.RayError as exc:  # lost after max_retries, out of memory, unschedulable …
            raise RankscopeError(f"a Ray task failed after {MAX_RETRIES} retries: {_first_line(exc)}") from exc

    def describe(self) -> dict[str, Any]:
        """The executor as ``run.json`` records it (cluster facts once :meth:`run` has connected)."""
        return self.info or {"name": "ray", "address": self.address}


Executor = LocalExecutor | RayExecutor


# --------------------------------------------------------------------------------------------------
# choosing one
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def executor_defaults(kind: str = "local", ray_address: str | None = None) -> Iterator[None]:
    """The executor that :func:`make_executor` picks when none is given, while inside (e.g. for the spectra
    ``recommend`` computes on the fly)."""
    if kind not in EXECUTORS:
        raise RankscopeError(f"--executor: '{kind}' is not one of {', '.join(EXECUTORS)}")
    if ray_address is not None and kind != "ray":
        raise RankscopeError("--ray-address only applies with --executor ray")
    token = _DEFAULTS.set((kind, ray_address))
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def executor_scope(kind: str | None, ray_address: str | None = None) -> contextlib.AbstractContextManager:
    """:func:`executor_defaults` for an API call's ``executor``/``ray_address``; nothing changes when both are None."""
    if kind is None and ray_address is None:
        return contextlib.nullcontext()
    return executor_defaults(kind or "local", ray_address)


def make_executor(kind: str | Executor | None, device: str, workers: int | None = None,
                  ray_address: str | None = None) -> Executor:
    """The executor of a run: an executor object is used as is; ``None`` is the current default.

    ``local``: ``device`` is checked (:func:`rankscope.options.resolve_device`); ``cuda`` with several GPUs
    visible gives one thread per GPU; ``workers`` threads (default: the CPU count on the CPU, one per GPU).
    ``ray``: ``device`` is checked against the cluster when the run starts; ``workers`` is not used.
    """
    if isinstance(kind, LocalExecutor | RayExecutor):
        return kind
    default_kind, default_address = _DEFAULTS.get()
    if kind is None:
        kind, ray_address = default_kind, ray_address or default_address
    if kind not in EXECUTORS:
        raise RankscopeError(f"--executor: '{kind}' is not one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise RankscopeError(f"--workers: must be at least 1, got {workers}")
    if kind == "ray":
        if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?|auto", device):
            raise RankscopeError(f"--device {device}: unknown device (use cpu, cuda, cuda:N or auto)")
        import_ray()  # a missing Ray fails before any work
        return RayExecutor(ray_address, "cuda" if device.startswith("cuda") else device)
    if ray_address is not None:
        raise RankscopeError("--ray-address only applies with --executor ray")
    device = resolve_device(device)
    devices = local_devices(device)
    n = workers or ((os.cpu_count() or 1) if device == "cpu" else len(devices))
    return LocalExecutor(tuple(devices), n)

