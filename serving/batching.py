"""Dynamic batching: requests for the same signature are queued and run as one model call.

It follows TF Serving's batch scheduler. A batch collects tasks of one kind (same servable,
signature, dtypes and inner shapes) until it holds `max_batch_size` items or its oldest task
has waited `batch_timeout_micros`; it then runs on the first free batch thread. While every
thread is busy, waiting batches keep taking new tasks, so under load batches fill up by
themselves and an idle server adds no delay beyond the timeout. At most
`max_enqueued_batches` batches wait; past that a task is refused with UNAVAILABLE (HTTP 503)
rather than queued without bound.

The scheduler lives on the asyncio event loop; model calls run in a thread pool, where
TensorFlow releases the GIL.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from serving import status

# TF Serving's message when the queue is full (UNAVAILABLE).
QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"

# Runs the payloads of one batch; returns one result (or exception) per payload.
BatchFunction = Callable[[list[Any]], Sequence[Any]]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Task:
    payload: Any
    size: int
    future: asyncio.Future
    enqueued: float


@dataclasses.dataclass(eq=False)
class _Batch:
    key: Hashable | None
    function: BatchFunction
    created: float
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0
    closed: bool = False  # takes no more tasks: full, unshareable, or superseded


@dataclasses.dataclass
class BatchStats:
    """What a batch looked like, for metrics."""

    size: int
    tasks: int
    queue_seconds: float
    run_seconds: float


class BatchScheduler:
    """Queues tasks into batches and runs each batch on one of `num_batch_threads` threads.

    With `max_batch_size=1` it is a plain bounded work queue: every request runs on its own,
    which is how the server runs when batching is off.
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        *,
        max_batch_size: int,
        batch_timeout_micros: int,
        num_batch_threads: int,
        max_enqueued_batches: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        if max_batch_size < 1 or num_batch_threads < 1 or max_enqueued_batches < 1:
            raise ValueError(
                "max_batch_size, num_batch_threads and max_enqueued_batches must be positive"
            )
        if batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must not be negative")
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout_micros / 1e6
        self.num_batch_threads = num_batch_threads
        self.max_enqueued_batches = max_enqueued_batches
        self._executor = executor
        self._on_batch = on_batch
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._open: dict[Hashable, _Batch] = {}  # the batch each key may still join
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._idle: asyncio.Event | None = None

    @property
    def queued_tasks(self) -> int:
        return sum(len(batch.tasks) for batch in self._waiting)

    @property
    def running_batches(self) -> int:
        return self._running

    async def submit(
        self, key: Hashable | None, size: int, payload: Any, function: BatchFunction
    ) -> Any:
        """Queues one task and waits for its result.

        Args:
          key: tasks with equal keys may share a batch (and `function`); None never shares.
          size: the task's batch dimension, counted against `max_batch_size`.
          payload: what `function` receives, in a list with the other tasks' payloads.
          function: runs in a worker thread; returns one result per payload, where an
            exception instance fails only its own task.

        Raises:
          status.ServingError: UNAVAILABLE when the queue is full or the server is closing.
        """
        if self._closing:
            raise status.unavailable("The server is shutting down")
        loop = asyncio.get_running_loop()
        batch = self._batch_for(key, size, function, loop.time())
        task = _Task(payload, size, loop.create_future(), loop.time())
        batch.tasks.append(task)
        batch.size += size
        if batch.size >= self.max_batch_size:
            self._close(batch)
        self._dispatch()
        try:
            return await task.future
        except asyncio.CancelledError:
            self._withdraw(batch, task)
            raise

    def _batch_for(
        self, key: Hashable | None, size: int, function: BatchFunction, now: float
    ) -> _Batch:
        batch = self._open.get(key) if key is not None else None
        if batch is not None and batch.size + size <= self.max_batch_size:
            return batch
        if len(self._waiting) >= self.max_enqueued_batches:
            raise status.unavailable(QUEUE_FULL_MESSAGE)
        if batch is not None:
            self._close(batch)
        batch = _Batch(key, function, now, closed=key is None)
        self._waiting.append(batch)
        if key is not None:
            self._open[key] = batch
        return batch

    def _close(self, batch: _Batch) -> None:
        batch.closed = True
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _withdraw(self, batch: _Batch, task: _Task) -> None:
        """Takes a cancelled task (deadline passed, client gone) out of a batch not yet run."""
        if batch in self._waiting and task in batch.tasks:
            batch.tasks.remove(task)
            batch.size -= task.size
            if not batch.tasks:
                self._waiting.remove(batch)
                self._close(batch)

    def _ready(self, batch: _Batch, now: float) -> bool:
        return self._closing or batch.closed or now - batch.created >= self.batch_timeout

    def _dispatch(self) -> None:
        """Starts ready batches on free threads; arms a timer for the next one to ripen."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._running < self.num_batch_threads and self._waiting:
            batch = next((b for b in self._waiting if self._ready(b, now)), None)
            if batch is None:
                break
            self._waiting.remove(batch)
            self._close(batch)
            self._start(batch, now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting and self._running < self.num_batch_threads:
            deadline = min(batch.created for batch in self._waiting) + self.batch_timeout
            self._timer = loop.call_at(deadline, self._dispatch)
        if self._idle is not None and not self._waiting and not self._running:
            self._idle.set()

    def _start(self, batch: _Batch, now: float) -> None:
        self._running += 1
        queue_seconds = now - min(task.enqueued for task in batch.tasks)
        payloads = [task.payload for task in batch.tasks]
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, batch.function, payloads
        )

        def finished(done: asyncio.Future) -> None:
            self._running -= 1
            run_seconds = time.perf_counter() - started
            self._deliver(batch, done)
            if self._on_batch is not None:
                self._on_batch(BatchStats(batch.size, len(batch.tasks), queue_seconds, run_seconds))
            self._dispatch()

        future.add_done_callback(finished)

    @staticmethod
    def _deliver(batch: _Batch, done: asyncio.Future) -> None:
        error = done.exception()
        results = None if error is not None else list(done.result())
        if results is not None and len(results) != len(batch.tasks):
            error = RuntimeError(f"batch function returned {len(results)} results")
        for index, task in enumerate(batch.tasks):
            if task.future.done():
                continue
            outcome = error if error is not None else results[index]
            if isinstance(outcome, BaseException):
                task.future.set_exception(outcome)
            else:
                task.future.set_result(outcome)

    async def drain(self) -> None:
        """Refuses new tasks, runs every queued batch now, and waits until all are done."""
        self._closing = True
        self._idle = asyncio.Event()
        self._dispatch()
        await self._idle.wait()


# -------------------------------------------------------------------------------------------
# Concatenating requests into a batch and splitting the outputs back.


def batch_size_of(tensors: dict[str, np.ndarray]) -> int | None:
    """The shared first dimension of all inputs, or None when they do not share one."""
    sizes = {np.shape(value)[0] if np.ndim(value) else None for value in tensors.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()


def batch_key(prefix: Hashable, tensors: dict[str, np.ndarray]) -> Hashable:
    """Tasks can share a batch when names, dtypes and all but the first dimension agree."""
    layout = tuple(
        sorted((name, value.dtype.str, np.shape(value)[1:]) for name, value in tensors.items())
    )
    return (prefix, layout)


def run_batched(
    function: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    payloads: list[dict[str, np.ndarray]],
) -> list[Any]:
    """Runs `function` once on the concatenated inputs and splits its outputs per payload.

    If the combined call fails, each payload runs on its own, so one bad request (say, bytes
    that are not an image) fails alone instead of failing everyone it was batched with.
    """
    if len(payloads) == 1:
        return [_outcome(function, payloads[0])]
    sizes = [batch_size_of(payload) for payload in payloads]
    combined = {
        name: np.concatenate([payload[name] for payload in payloads]) for name in payloads[0]
    }
    try:
        outputs = function(combined)
    except Exception as error:  # retried one by one below
        logger.info(
            "A batch of %d requests failed (%s); running them one by one", len(payloads), error
        )
        return [_outcome(function, payload) for payload in payloads]
    total = sum(sizes)
    if any(np.ndim(value) == 0 or np.shape(value)[0] != total for value in outputs.values()):
        return [_outcome(function, payload) for payload in payloads]
    bounds = np.cumsum([0] + sizes)
    return [
        {name: value[start:end] for name, value in outputs.items()}
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _outcome(function: Callable, payload: Any) -> Any:
    try:
        return function(payload)
    except Exception as error:  # handed to the task that sent this payload
        return error
