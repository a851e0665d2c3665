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


def scheduler(executor, unbatched_queue_limit=4, **overrides):
    options = dict(
        max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1, max_enqueued_batches=4
    )
    options.update(overrides)
    return batching.BatchScheduler(
        executor, batching.BatchingOptions(**options), unbatched_queue_limit=unbatched_queue_limit
    )


class Recorder:
    """A batch function that remembers the batches it ran and doubles each payload."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list] = []
        self.started: list[list] = []
        self.timeouts: list = []
        self.gate = gate

    def __call__(self, payloads, timeout):
        self.started.append(list(payloads))
        self.timeouts.append(timeout)
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
        batcher = scheduler(executor, unbatched_queue_limit=1, batch_timeout_micros=0)
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
    assert refused.message.startswith("The request queue is full")
    assert results == [2, 4]


def test_a_queue_past_max_enqueued_batches_answers_tf_servings_message(executor):
    async def main():
        gate = threading.Event()
        batcher = scheduler(executor, max_batch_size=2, max_enqueued_batches=1)
        recorder = Recorder(gate)
        running = asyncio.ensure_future(batcher.submit("k", 2, 1, recorder))
        await asyncio.sleep(0.1)  # running: the queue is empty again
        waiting = asyncio.ensure_future(batcher.submit("k", 2, 2, recorder))
        await asyncio.sleep(0.01)
        with pytest.raises(status.ServingError) as refused:
            await batcher.submit("k", 1, 3, recorder)
        gate.set()
        await asyncio.gather(running, waiting)
        return refused.value

    refused = asyncio.run(main())
    assert refused.message == (
        "The batch scheduling queue to which this task was submitted is full; currently 1 "
        "batches enqueued and max_enqueued_batches is 1"
    )


def test_a_task_larger_than_max_batch_size_is_refused(executor):
    async def main():
        batcher = scheduler(executor, max_batch_size=4)
        with pytest.raises(status.ServingError) as refused:
            await batcher.submit("k", 5, 5, Recorder())
        return refused.value

    refused = asyncio.run(main())
    assert refused.code == status.Code.INVALID_ARGUMENT
    assert refused.message == "Task size 5 is larger than maximum input batch size 4"


def test_large_batch_splitting_fills_the_open_batch_then_full_batches(executor):
    """enable_large_batch_splitting: a task of 7 with 1 item waiting and batches of 3."""

    async def main():
        gate = threading.Event()
        batcher = scheduler(
            executor,
            max_batch_size=10,
            max_execution_batch_size=3,
            enable_large_batch_splitting=True,
            batch_timeout_micros=1_000_000,
        )
        calls = []

        def model(tensors, timeout):
            gate.wait(10)
            calls.append(len(tensors["x"]))
            return {"y": tensors["x"] * 10}

        def function(payloads, timeout):
            return batching.run_batched(model, payloads, timeout)

        def submit(values):
            tensors = {"x": np.array(values)}
            return batcher.submit(
                "k",
                len(values),
                tensors,
                function,
                split=batching.split_tensors,
                merge=batching.concatenate_outputs,
            )

        first = asyncio.ensure_future(submit([100]))
        await asyncio.sleep(0.01)
        big = asyncio.ensure_future(submit(list(range(7))))
        await asyncio.sleep(0.01)
        gate.set()
        return await first, await big, calls

    first, big, calls = asyncio.run(main())
    assert first["y"].tolist() == [1000]
    assert big["y"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert sorted(calls) == [2, 3, 3] and sum(calls) == 8


def test_every_batch_gets_the_latest_deadline_of_its_tasks(executor):
    async def main():
        loop = asyncio.get_running_loop()
        batcher, recorder = scheduler(executor, batch_timeout_micros=50_000), Recorder()
        await asyncio.gather(
            batcher.submit("k", 1, 1, recorder, deadline=loop.time() + 5),
            batcher.submit("k", 1, 2, recorder, deadline=loop.time() + 9),
        )
        await batcher.submit(None, 1, 3, recorder)
        return recorder.timeouts

    timeouts = asyncio.run(main())
    assert 8 < timeouts[0] <= 9 and timeouts[1] is None


def test_heavy_batches_leave_a_thread_for_light_ones(executor):
    """Two batch threads: a second heavy batch waits, a light one runs beside the first."""

    async def main():
        gate = threading.Event()
        batcher = scheduler(executor, num_batch_threads=2, batch_timeout_micros=0)
        recorder = Recorder(gate)
        heavy = batching.HEAVY_TASK_BYTES + 1
        first = asyncio.ensure_future(batcher.submit(None, 1, 1, recorder, nbytes=heavy))
        second = asyncio.ensure_future(batcher.submit(None, 1, 2, recorder, nbytes=heavy))
        await asyncio.sleep(0.05)
        light = asyncio.ensure_future(batcher.submit(None, 1, 3, recorder))
        await asyncio.sleep(0.05)
        running = list(recorder.started)
        gate.set()
        await asyncio.gather(first, second, light)
        return running, recorder.started

    running, started = asyncio.run(main())
    assert running == [[1], [3]]  # the second heavy batch waited, the light one did not
    assert started == [[1], [3], [2]]


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
    def function(payloads, timeout):
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


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_batch_size": 0}, "max_batch_size must be positive; was 0"),
        ({"batch_timeout_micros": -1}, "batch_timeout_micros must be non-negative"),
        ({"allowed_batch_sizes": (2, 4)}, "Last entry in allowed_batch_sizes must match"),
        (
            {"enable_large_batch_splitting": True, "max_execution_batch_size": 16},
            "input_batch_size_limit must be greater than or equal to max_execution_batch_size",
        ),
    ],
)
def test_invalid_settings_are_refused_with_tf_servings_messages(settings, message):
    with pytest.raises(ValueError, match=message):
        batching.BatchingOptions(**{"max_batch_size": 8, **settings})


def test_options_from_a_batching_parameters_file_keep_tf_servings_defaults():
    from google.protobuf import text_format

    from serving import config_protos

    parameters = text_format.Parse(
        "max_batch_size { value: 128 } enable_large_batch_splitting { value: true }",
        config_protos.BatchingParameters(),
    )
    options = batching.BatchingOptions.from_proto(parameters)
    assert (options.max_batch_size, options.max_execution_batch_size) == (128, 128)
    assert (options.batch_timeout_micros, options.max_enqueued_batches) == (0, 10)
    assert options.num_batch_threads == batching.default_num_batch_threads()


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

    def model(tensors, timeout):
        calls.append(tensors["x"].tolist())
        return {"y": tensors["x"] * 10, "n": np.full(len(tensors["x"]), len(tensors["x"]))}

    payloads = [{"x": np.array([1, 2])}, {"x": np.array([3])}]
    first, second = batching.run_batched(model, payloads, None)
    assert calls == [[1, 2, 3]]
    assert first["y"].tolist() == [10, 20] and second["y"].tolist() == [30]
    assert first["n"].tolist() == [3, 3]

    calls.clear()
    first, second = batching.run_batched(model, payloads, None, allowed_batch_sizes=(2, 4, 8))
    assert calls == [[1, 2, 3, 1]]  # padded to 4 with the first item, padding dropped
    assert first["y"].tolist() == [10, 20] and second["y"].tolist() == [30]


def test_run_batched_retries_one_by_one_so_a_bad_request_fails_alone():
    def model(tensors, timeout):
        if (tensors["x"] < 0).any():
            raise status.invalid_argument("negative input")
        return {"y": tensors["x"] + 1}

    good, bad, also_good = batching.run_batched(
        model, [{"x": np.array([1])}, {"x": np.array([-1])}, {"x": np.array([5])}], None
    )
    assert good["y"].tolist() == [2] and also_good["y"].tolist() == [6]
    assert isinstance(bad, status.ServingError) and "negative" in bad.message
