"""Request coalescing: concurrent recommendations share one pass through the models (micro-batching).

On a CPU the per-call overhead of small models dominates, so a batch of B costs far less than B passes. Two
batchers hand each caller its own result:

- :class:`LoopBatcher` (the HTTP server): on the event loop's own thread. A request queues its payload and awaits;
  the batch runs once the loop has taken in what arrived meanwhile, so every request parsed in the same turn of the
  loop joins it. No thread hand-over and no contention for the interpreter lock between a model thread and the
  loop: while a batch runs the loop is busy anyway, and new requests wait in the sockets for the next batch.
- :class:`BatchWorker` (synchronous callers, the exposure log): one thread takes whatever requests have queued (up
  to ``max_batch``) and runs them together. A lone request runs at once (no waiting for company); under load the
  batch is whatever arrived while the last one ran.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

IDLE_EXIT_S = 5.0  # a worker thread with nothing to do for this long exits (a new request starts another)
_STOP = object()  # queued by close()


class BatchWorker:
    """Runs ``run`` (a list of payloads -> a list of results, one each) over batches of submitted payloads on a
    thread of its own, and hands each caller its own result through a Future.

    A payload whose Future was cancelled before its batch started (its caller's deadline passed) is skipped. When
    ``run`` raises for a batch of several, each payload is run alone, so one bad request fails only itself.
    ``run`` is held weakly when it is a bound method: an idle worker keeps no model alive (a reloaded one can go)."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int = 32, name: str = "genrec-batch"):
        self._run = _held(run)
        self.max_batch, self.name = max_batch, name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._busy = False  # a batch is running

    def submit(self, payload: Any) -> Future:
        """A Future of ``run``'s result for ``payload``, computed in a batch with whatever else is queued."""
        done: Future = Future()
        self._queue.put((payload, done))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        return done

    def run_if_idle(self, payload: Any) -> bool:
        """Run ``payload`` alone in the caller's thread when nothing is queued or running (True), else nothing
        (False: the caller submits it). For work so short that handing it to the thread and back costs more than
        doing it, such as a lone exposure's commit; ``run``'s error reaches the caller."""
        run = self._run()
        if run is None or self._busy or not self._queue.empty():
            return False
        run([payload])
        return True

    def close(self) -> None:
        """Let the thread exit once what is queued now is answered (a later submit starts another)."""
        self._queue.put(_STOP)

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                first = _STOP
            if first is _STOP:
                with self._lock:  # submit queues before it checks the thread: nothing is left behind
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    jobs.append(job)
            self._busy = True
            try:
                run_batch(self._run(), [(p, done) for p, done in jobs if done.set_running_or_notify_cancel()])
            finally:
                self._busy = False



class LoopBatcher:
    """Runs ``run`` over batches of payloads submitted from coroutines of one event loop, on that loop's thread.

    The first payload of a batch schedules the run two turns of the loop later: the turn that parses the requests
    whose bytes arrived together starts their handlers, and the next one lets each reach its submit. Futures
    cancelled before their batch runs (a caller's deadline) are skipped; when ``run`` raises for a batch of several,
    each payload is run alone. ``run`` is held weakly when it is a bound method, as :class:`BatchWorker` holds it."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int = 32):
        self._run = _held(run)
        self.max_batch = max_batch
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._scheduled = False

    def submit(self, payload: Any) -> asyncio.Future:
        """An asyncio Future (of the running loop) of ``run``'s result for ``payload``."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((payload, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(loop.call_soon, self._run_pending)
        return done

    def _run_pending(self) -> None:
        jobs, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        if self._pending:  # more than one batch queued: the rest runs on a later turn, after pending I/O
            asyncio.get_running_loop().call_soon(self._run_pending)
        else:
            self._scheduled = False
        run_batch(self._run(), [(p, done) for p, done in jobs if not done.done()])


def _held(run: Callable[[list[Any]], list[Any]]) -> Callable[[], Callable[[list[Any]], list[Any]] | None]:
    """``run`` behind a call that returns it: weakly held when it is a bound method, so that an idle batcher keeps
    no model alive (None once its owner is gone)."""
    return weakref.WeakMethod(run) if hasattr(run, "__self__") else (lambda: run)


def run_batch(run: Callable[[list[Any]], list[Any]] | None, jobs: list[tuple[Any, Any]]) -> None:
    """``run`` over the payloads of ``jobs`` ((payload, future) pairs: concurrent or asyncio futures), each result
    or error set on its future; when a batch of several fails, each payload runs alone, so one bad request fails
    only itself. ``run`` None: its owner is gone."""
    if not jobs:
        return
    if run is None:
        for _, done in jobs:
            done.set_exception(RuntimeError("the batch worker's owner was closed"))
        return
    try:
        results = run([payload for payload, _ in jobs])
    except Exception as e:  # noqa: BLE001 - retried one by one below, or the request's own error
        if len(jobs) == 1:
            jobs[0][1].set_exception(e)
            return
        for job in jobs:
            run_batch(run, [job])
        return
    for (_, done), result in zip(jobs, results, strict=True):
        done.set_result(result)
