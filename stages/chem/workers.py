"""A process pool that can lose one task without losing the run.

Each worker takes one task at a time over its own pipe, so the parent always knows which task a worker
holds: a task past its deadline gets its worker killed (native code such as Vina cannot be interrupted
any other way) and a worker that dies (a segfault in native code) costs only its task. Either way the
task is reported as a `TaskFailure` and a fresh worker takes its place. Workers persist across `run`
calls. With the default "fork" start method a worker starts in milliseconds and inherits what the parent
already built (imported modules, precomputed docking grids); it must only use what fork preserves (no
threads started by the parent), which holds for RDKit/Meeko/Vina work.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any


@dataclass(frozen=True)
class TaskFailure:
    """Why a task produced no result: "timeout", "crashed" (worker died) or "error" (it raised)."""

    kind: str
    message: str
    seconds: float


def _worker_main(conn, fn: Callable) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, args = msg
        try:
            conn.send((key, True, fn(*args)))
        except BaseException as exc:  # report, keep serving
            conn.send((key, False, f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx, fn: Callable):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        self.process.start()
        child.close()  # so the parent sees EOF when the worker dies
        self.task: tuple[Hashable, float] | None = None  # (key, start time)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    """`run(tasks)` yields (key, result or TaskFailure) as tasks complete, in completion order."""

    def __init__(self, fn: Callable, workers: int, *, timeout_s: float | None = None,
                 context: str = "fork"):
        if workers < 1:
            raise ValueError(f"WorkerPool needs workers >= 1, got {workers}")
        self.fn, self.n, self.timeout_s = fn, workers, timeout_s
        self.ctx = mp.get_context(context)
        self.workers: list[_Worker] = []

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.ctx, self.fn)

    def run(self, tasks: Iterable[tuple[Hashable, tuple]]) -> Iterator[tuple[Hashable, Any]]:
        while len(self.workers) < self.n:
            self.workers.append(_Worker(self.ctx, self.fn))
        for worker in [w for w in self.workers if w.task]:  # left busy by an abandoned earlier run
            self._replace(worker)
        pending = deque(tasks)
        while pending or any(w.task for w in self.workers):
            for worker in [w for w in self.workers if w.task is None]:
                if not pending:
                    break
                key, args = pending.popleft()
                try:
                    worker.conn.send((key, args))
                except (BrokenPipeError, OSError):  # died while idle: replace, retry the task
                    self._replace(worker)
                    pending.appendleft((key, args))
                    continue
                worker.task = (key, time.monotonic())
            yield from self._collect()

    def _collect(self) -> Iterator[tuple[Hashable, Any]]:
        busy = [w for w in self.workers if w.task]
        timeout = None
        if self.timeout_s is not None:
            timeout = max(0.0, min(w.task[1] for w in busy) + self.timeout_s - time.monotonic())
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        now = time.monotonic()
        for worker in busy:
            key, start = worker.task
            if worker.conn in ready or worker.process.sentinel in ready:
                try:
                    _, ok, out = worker.conn.recv() if worker.conn.poll() else (None, None, None)
                except (EOFError, OSError):
                    ok = None
                if ok is None:
                    worker.process.join(1)
                    failure = TaskFailure("crashed", f"worker process died (exit code "
                                          f"{worker.process.exitcode})", now - start)
                    self._replace(worker)
                    yield key, failure
                    continue
                worker.task = None
                yield key, out if ok else TaskFailure("error", out, now - start)
            elif self.timeout_s is not None and now - start >= self.timeout_s:
                self._replace(worker)
                yield key, TaskFailure("timeout", f"killed after {self.timeout_s:g} s", now - start)

    def close(self) -> None:
        for worker in self.workers:
            try:
                if worker.task is None:
                    worker.conn.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(0.5 if worker.task is None else 0)
            worker.kill()
        self.workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
