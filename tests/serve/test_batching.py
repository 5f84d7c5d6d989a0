"""BatchWorker: queued payloads run together on the worker's thread, each caller gets its own result; a bad payload
fails only itself; a cancelled one never runs; close() and an idle worker let the thread go; the owner of a bound
``run`` is not kept alive. LoopBatcher: the same on the event loop's thread, for the payloads of one turn."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

import genrec.serve.batching as batching
from genrec.serve.batching import BatchWorker, LoopBatcher
from genrec.serve.recommender import DEADLINE, Recommender


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


# --- LoopBatcher: batches on the event loop's own thread ------------------------------------------------------


def test_loop_batcher_runs_one_turns_submissions_together_on_the_loops_thread():
    model, threads = Model(), []
    batcher = LoopBatcher(lambda batch: threads.append(threading.current_thread()) or model.run(batch), max_batch=4)

    async def main() -> list:
        return await asyncio.gather(*(batcher.submit(p) for p in range(1, 11)))

    assert asyncio.run(main()) == [2 * p for p in range(1, 11)]
    assert model.batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]  # max_batch caps each batch
    assert threads == [threading.main_thread()] * 3


def test_loop_batcher_skips_a_cancelled_payload_and_a_bad_one_fails_only_itself():
    model = Model()
    batcher = LoopBatcher(model.run)

    async def main() -> tuple:
        futures = [batcher.submit(p) for p in (2, "gone", "bad", 3)]
        futures[1].cancel()  # its caller's deadline passed before the batch ran
        return await asyncio.gather(*futures, return_exceptions=True)

    two, gone, bad, three = asyncio.run(main())
    assert (two, three) == (4, 6) and isinstance(gone, asyncio.CancelledError)
    assert isinstance(bad, ValueError) and "bad payload" in str(bad)
    assert model.batches == [[2, "bad", 3], [2], ["bad"], [3]]  # the batch, then each alone


def test_a_recommender_batches_concurrent_async_requests(bundles):
    rec = Recommender.load(bundles[0])
    histories = [rec.popular_ids(3)[i:] for i in range(3)]
    calls = []
    run = rec._pipeline.run
    rec._pipeline.run = lambda jobs: calls.append(len(jobs)) or run(jobs)
    rec._batchers.clear()  # the batcher holds the pipeline's run from construction

    async def main() -> list:
        return await asyncio.gather(*(rec.recommend_async(h, k=2) for h in histories))

    answers = asyncio.run(main())
    alone = [rec.recommend(h, k=2) for h in histories]
    assert calls == [3]
    assert [[i["item_id"] for i in a.items] for a in answers] == [[i["item_id"] for i in a.items] for a in alone]


def test_an_async_request_whose_deadline_passes_before_its_batch_falls_back_and_is_never_run(bundles):
    rec = Recommender.load(bundles[0])
    history = rec.popular_ids(3)
    calls = []
    run = rec._pipeline.run
    rec._pipeline.run = lambda jobs: calls.append(len(jobs)) or run(jobs)
    rec._batchers.clear()

    async def main() -> tuple:
        late = rec.recommend_async(history, k=2, deadline_ms=1e-6)  # past before the loop can run any batch
        on_time = rec.recommend_async(history, k=2, deadline_ms=10_000)
        return await asyncio.gather(late, on_time)

    late, on_time = asyncio.run(main())
    assert late.fallback and late.reason == DEADLINE and late.mode == "popularity"
    assert not on_time.fallback and calls == [1]  # the batch ran the request still waiting, alone
