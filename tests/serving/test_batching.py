"""Dynamic batching: tasks merge into batches, the queue is bounded, failures stay with their task."""

import asyncio
import concurrent.futures
import threading

import numpy as np
import pytest

from serving import batching, status


@pytest.fixture
def executor():
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


def scheduler(executor, **overrides):
    options = dict(
        max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1, max_enqueued_batches=4
    )
    options.update(overrides)
    return batching.BatchScheduler(executor, **options)


class Recorder:
    """A batch function that remembers the batches it ran and doubles each payload."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list] = []
        self.gate = gate

    def __call__(self, payloads):
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(payloads))
        return [payload * 2 for payload in payloads]


def test_concurrent_tasks_share_one_batch(executor):
    async def main():
        batcher, recorder = scheduler(executor), Recorder()
        results = await asyncio.gather(*(batcher.submit("k", 1, n, recorder) for n in range(5)))
        return results, recorder.batches

    results, batches = asyncio.run(main())
    assert results == [0, 2, 4, 6, 8]
    assert batches == [[0, 1, 2, 3, 4]]


def test_batches_never_exceed_max_batch_size(executor):
    async def main():
        batcher, recorder = scheduler(executor, max_batch_size=4), Recorder()
        sizes = [3, 2, 2, 1, 4]
        await asyncio.gather(*(batcher.submit("k", size, size, recorder) for size in sizes))
        return recorder.batches

    batches = asyncio.run(main())
    assert all(sum(batch) <= 4 for batch in batches)
    assert sorted(size for batch in batches for size in batch) == [1, 2, 2, 3, 4]


def test_different_keys_never_share_a_batch(executor):
    async def main():
        batcher, recorder = scheduler(executor), Recorder()
        await asyncio.gather(
            batcher.submit("a", 1, 1, recorder),
            batcher.submit("b", 1, 10, recorder),
            batcher.submit(None, 1, 100, recorder),
            batcher.submit(None, 1, 1000, recorder),
        )
        return recorder.batches

    batches = asyncio.run(main())
    assert sorted(batches) == [[1], [10], [100], [1000]]


def test_tasks_arriving_within_the_timeout_join_the_waiting_batch(executor):
    async def main():
        batcher, recorder = scheduler(executor, batch_timeout_micros=300_000), Recorder()
        first = asyncio.ensure_future(batcher.submit("k", 1, 1, recorder))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit("k", 1, 2, recorder))
        await asyncio.gather(first, second)
        return recorder.batches

    assert asyncio.run(main()) == [[1, 2]]


def test_waiting_batches_keep_filling_while_threads_are_busy(executor):
    async def main():
        gate = threading.Event()
        batcher = scheduler(executor, batch_timeout_micros=0)
        recorder = Recorder(gate)
        busy = asyncio.ensure_future(batcher.submit("k", 1, 0, recorder))
        await asyncio.sleep(0.05)  # the first batch is running and blocks the only thread
        later = [asyncio.ensure_future(batcher.submit("k", 1, n, recorder)) for n in (1, 2, 3)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(busy, *later)
        return recorder.batches

    assert asyncio.run(main()) == [[0], [1, 2, 3]]


def test_full_queue_answers_unavailable(executor):
    async def main():
        gate = threading.Event()
        batcher = scheduler(executor, max_enqueued_batches=1, batch_timeout_micros=0)
        recorder = Recorder(gate)
        running = asyncio.ensure_future(batcher.submit(None, 1, 1, recorder))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.submit(None, 1, 2, recorder))
        await asyncio.sleep(0.01)
        with pytest.raises(status.ServingError) as refused:
            await batcher.submit(None, 1, 3, recorder)
        gate.set()
        return refused.value, await asyncio.gather(running, waiting)

    refused, results = asyncio.run(main())
    assert refused.code == status.Code.UNAVAILABLE and refused.http_status == 503
    assert batching.QUEUE_FULL_MESSAGE in refused.message
    assert results == [2, 4]


def test_cancelled_task_is_withdrawn_before_its_batch_runs(executor):
    async def main():
        batcher, recorder = scheduler(executor, batch_timeout_micros=200_000), Recorder()
        doomed = asyncio.ensure_future(batcher.submit("k", 1, 1, recorder))
        kept = asyncio.ensure_future(batcher.submit("k", 1, 2, recorder))
        await asyncio.sleep(0.01)
        doomed.cancel()
        return await kept, recorder.batches

    result, batches = asyncio.run(main())
    assert result == 4
    assert batches == [[2]]


def test_drain_runs_what_is_queued_and_refuses_new_work(executor):
    async def main():
        batcher, recorder = scheduler(executor, batch_timeout_micros=10_000_000), Recorder()
        pending = asyncio.ensure_future(batcher.submit("k", 1, 5, recorder))
        await asyncio.sleep(0.01)
        await batcher.drain()
        assert pending.done()
        with pytest.raises(status.ServingError, match="shutting down"):
            await batcher.submit("k", 1, 6, recorder)
        return pending.result()

    assert asyncio.run(main()) == 10


def test_exceptions_fail_only_their_task(executor):
    def function(payloads):
        return [ValueError("bad") if payload < 0 else payload for payload in payloads]

    async def main():
        batcher = scheduler(executor)
        return await asyncio.gather(
            batcher.submit("k", 1, 1, function),
            batcher.submit("k", 1, -1, function),
            return_exceptions=True,
        )

    good, bad = asyncio.run(main())
    assert good == 1 and isinstance(bad, ValueError)


def test_invalid_settings_are_refused(executor):
    with pytest.raises(ValueError):
        scheduler(executor, max_batch_size=0)
    with pytest.raises(ValueError):
        scheduler(executor, batch_timeout_micros=-1)


# -- concatenating and splitting -----------------------------------------------------------


def test_batch_size_and_key():
    tensors = {"a": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.int64)}
    assert batching.batch_size_of(tensors) == 3
    assert batching.batch_size_of({"a": np.zeros(3), "b": np.zeros(4)}) is None
    assert batching.batch_size_of({"a": np.float32(1)}) is None
    same_layout = {"a": np.ones((5, 2), np.float32), "b": np.ones(5, np.int64)}
    assert batching.batch_key("p", tensors) == batching.batch_key("p", same_layout)
    other_shape = {"a": np.ones((5, 3), np.float32), "b": np.ones(5, np.int64)}
    assert batching.batch_key("p", tensors) != batching.batch_key("p", other_shape)


def test_run_batched_concatenates_and_splits():
    calls = []

    def model(tensors):
        calls.append(len(tensors["x"]))
        return {"y": tensors["x"] * 10, "n": np.full(len(tensors["x"]), len(tensors["x"]))}

    payloads = [{"x": np.array([1, 2])}, {"x": np.array([3])}]
    first, second = batching.run_batched(model, payloads)
    assert calls == [3]
    assert first["y"].tolist() == [10, 20] and second["y"].tolist() == [30]
    assert first["n"].tolist() == [3, 3]


def test_run_batched_retries_one_by_one_so_a_bad_request_fails_alone():
    def model(tensors):
        if (tensors["x"] < 0).any():
            raise status.invalid_argument("negative input")
        return {"y": tensors["x"] + 1}

    good, bad, also_good = batching.run_batched(
        model, [{"x": np.array([1])}, {"x": np.array([-1])}, {"x": np.array([5])}]
    )
    assert good["y"].tolist() == [2] and also_good["y"].tolist() == [6]
    assert isinstance(bad, status.ServingError) and "negative" in bad.message
