"""BatchWorker: queued payloads run together on the worker's thread, each caller gets its own result; a bad payload
fails only itself; a cancelled one never runs; close() and an idle worker let the thread go; the owner of a bound
``run`` is not kept alive."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

import genrec.serve.batching as batching
from genrec.serve.batching import BatchWorker


class Model:
    """Doubles its inputs; 'bad' raises; each batch is recorded and held for ``hold`` seconds, and a batch with
    payload 0 until ``gate`` is set (so that the next payloads queue up behind it)."""

    def __init__(self, hold: float = 0.0):
        self.batches: list[list] = []
        self.hold, self.gate = hold, threading.Event()

    def run(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        time.sleep(self.hold)
        if 0 in payloads:
            self.gate.wait(10)
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [2 * p for p in payloads]


def test_concurrent_payloads_share_batches_and_get_their_own_results():
    model = Model(hold=0.02)
    worker = BatchWorker(model.run, max_batch=4)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda x: worker.submit(x).result(timeout=10), range(1, 25)))
    assert got == [2 * x for x in range(1, 25)]
    assert max(len(b) for b in model.batches) > 1 and max(len(b) for b in model.batches) <= 4
    assert sorted(p for b in model.batches for p in b) == list(range(1, 25))


def test_a_bad_payload_fails_only_itself():
    model = Model()
    worker = BatchWorker(model.run)
    first = worker.submit(0)  # holds the thread while the next three queue up
    futures = [worker.submit(p) for p in (2, "bad", 3)]
    model.gate.set()
    assert first.result(timeout=10) == 0
    assert futures[0].result(timeout=10) == 4 and futures[2].result(timeout=10) == 6
    with pytest.raises(ValueError, match="bad payload"):
        futures[1].result(timeout=10)
    assert any({2, "bad", 3} <= set(b) for b in model.batches)  # queued together, then each alone
    assert [2] in model.batches and ["bad"] in model.batches and [3] in model.batches


def test_a_cancelled_payload_never_runs():
    model = Model()
    worker = BatchWorker(model.run)
    first = worker.submit(0)
    late, kept = worker.submit(2), worker.submit(3)
    assert late.cancel()  # its caller gave up (a deadline) before its batch started
    model.gate.set()
    assert first.result(timeout=10) == 0 and kept.result(timeout=10) == 6
    assert all(2 not in b for b in model.batches)


def test_close_and_idle_let_the_thread_exit_and_submit_starts_another(monkeypatch):
    monkeypatch.setattr(batching, "IDLE_EXIT_S", 0.05)
    model = Model()  # held here: the worker holds its bound run weakly
    worker = BatchWorker(model.run, name="genrec-test-batch")
    assert worker.submit(1).result(timeout=10) == 2

    def alive() -> bool:
        return any(t.name == "genrec-test-batch" for t in threading.enumerate())

    for _ in range(200):  # idle: the thread exits
        if not alive():
            break
        time.sleep(0.01)
    assert not alive()
    assert worker.submit(2).result(timeout=10) == 4
    worker.close()
    for _ in range(200):
        if not alive():
            break
        time.sleep(0.01)
    assert not alive()
    assert worker.submit(3).result(timeout=10) == 6  # usable after close


def test_the_owner_of_a_bound_run_is_not_kept_alive():
    model = Model()
    worker = BatchWorker(model.run)
    assert worker.submit(1).result(timeout=10) == 2
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the worker's thread holds the worker, not the model
    with pytest.raises(RuntimeError, match="owner"):
        worker.submit(2).result(timeout=10)


def test_run_if_idle_runs_in_the_caller_only_when_nothing_is_queued_or_running():
    seen, gate = [], threading.Event()

    def run(batch):
        if "slow" in batch:
            gate.wait(5)
        seen.append((threading.current_thread().name, list(batch)))
        return [None] * len(batch)

    worker = BatchWorker(run, name="genrec-test")
    assert worker.run_if_idle("a") and seen[-1] == (threading.current_thread().name, ["a"])
    slow = worker.submit("slow")
    while not worker._busy:  # the thread has taken it
        pass
    assert not worker.run_if_idle("b")  # busy: the caller must submit instead
    gate.set()
    slow.result(5)
    assert worker.run_if_idle("c") and seen[-1][1] == ["c"]
