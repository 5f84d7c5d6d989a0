"""Dynamic batching of model calls across concurrent request threads (the ID models' forward pass, the
ranker's)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any


class Batcher:
    """Dynamic batching of a model's forward pass: concurrent requests queue their inputs and one of them (the
    leader, whoever holds the lock) runs everything queued through ``run`` as one batch (up to ``max_batch`` at a
    time), handing each request its own result.

    Under concurrent load one forward pass for B requests costs less than B passes (the per-call overhead of a
    small model dominates on CPU), and one thread at a time in the model keeps request threads from contending
    for the interpreter. A lone request runs its own pass at once, on its own thread: no hand-over, no wait.
    ``run`` maps a list of inputs to a list of results (an exception fails every request of the batch)."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int = 32, poll_s: float = 0.001):
        self.run, self.max_batch, self.poll_s = run, max_batch, poll_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, payload: Any) -> Any:
        """``run``'s result for ``payload``, computed in a batch with concurrent calls."""
        done: Future = Future()
        self._queue.put((payload, done))
        while True:
            if self._lock.acquire(blocking=False):
                try:
                    while not done.done() and not self._queue.empty():  # lead until ours is answered
                        self._run_batch()
                finally:
                    self._lock.release()
            try:  # a leader runs our job; poll in case it released the lock just before we queued
                return done.result(timeout=self.poll_s)
            except FutureTimeout:
                continue

    def _run_batch(self) -> None:
        jobs = []
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        try:
            results = self.run([payload for payload, _ in jobs])
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            for _, done in jobs:
                done.set_exception(e)
            return
        for (_, done), result in zip(jobs, results, strict=True):
            done.set_result(result)
