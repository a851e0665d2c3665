"""Dynamic batching: requests for the same signature are queued and run as one model call.

It follows TF Serving's shared batch scheduler and batching session
(tensorflow/core/kernels/batching_util/shared_batch_scheduler.h,
tensorflow_serving/batching/batching_session.cc), with its BatchingParameters and defaults:

- A task (one request) larger than `max_batch_size` is refused: INVALID_ARGUMENT `Task size N
  is larger than maximum input batch size M`. With `enable_large_batch_splitting` it is
  split instead: its first part fills the open batch, the rest goes into batches of at most
  `max_execution_batch_size`, and its outputs are put back together.
- A batch collects tasks of one queue (servable, signature, input layout, outputs) until it
  holds `max_batch_size` items or its oldest task has waited `batch_timeout_micros`, then
  runs on the first free batch thread. While every thread is busy, waiting batches keep
  filling, so under load batches fill up by themselves.
- At most `max_enqueued_batches` batches of a queue wait; past that a task is refused with
  UNAVAILABLE (HTTP 503) and TF Serving's message, never queued without bound.
- `allowed_batch_sizes` pads a batch up to the next allowed size with copies of its first
  item, and the padding is dropped from the outputs.

Beyond TF Serving (for fairness on small machines): a batch whose inputs hold more than
`heavy_task_bytes` may use all batch threads but one, so small requests always have a thread;
every task carries its deadline, and the batch runs with the latest deadline of its tasks
(Session RunOptions.timeout_in_ms), so a request that runs too long is cancelled, decoding
included. Tasks that never share a batch (key None: batching off, or inputs without a batch
dimension) run one at a time through the same threads, in a queue of their own.

The scheduler lives on the asyncio event loop; model calls run in a thread pool, where
TensorFlow releases the GIL.
"""

import asyncio
import collections
import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from serving import status

logger = logging.getLogger(__name__)

# SharedBatchScheduler's QueueOptions defaults, used for fields a parameters file leaves out.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "model_server_batch_threads"
# A batch whose inputs exceed this many bytes is "heavy" (see the module docstring).
HEAVY_TASK_BYTES = 1 << 20

# Runs the payloads of one batch with a timeout in seconds (None: none); returns one result
# (or exception instance) per payload.
BatchFunction = Callable[[list[Any], float | None], Sequence[Any]]


def default_num_batch_threads() -> int:
    """TF Serving's default: port::MaxParallelism(), the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The scheduling side of TF Serving's BatchingParameters (defaults are TF Serving's)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = dataclasses.field(default_factory=default_num_batch_threads)
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        checks = (
            (
                self.max_batch_size > 0,
                f"max_batch_size must be positive; was {self.max_batch_size}",
            ),
            (
                self.batch_timeout_micros >= 0,
                f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}",
            ),
            (
                self.max_enqueued_batches > 0,
                f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}",
            ),
            (
                self.num_batch_threads > 0,
                f"num_batch_threads must be positive; was {self.num_batch_threads}",
            ),
            (
                not self.enable_large_batch_splitting
                or self.max_batch_size >= self.max_execution_batch_size > 0,
                "When enable_large_batch_splitting is true, input_batch_size_limit must be "
                "greater than or equal to max_execution_batch_size.",
            ),
            (
                list(self.allowed_batch_sizes) == sorted(set(self.allowed_batch_sizes))
                and all(size > 0 for size in self.allowed_batch_sizes),
                "allowed_batch_sizes entries must be positive and in increasing order",
            ),
            (
                not self.allowed_batch_sizes
                or self.allowed_batch_sizes[-1] == self.execution_batch_size,
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                f"{self.allowed_batch_sizes[-1] if self.allowed_batch_sizes else 0}; expected "
                f"{self.execution_batch_size}",
            ),
        )
        for valid, message in checks:
            if not valid:
                raise ValueError(message)

    @property
    def execution_batch_size(self) -> int:
        """The largest batch that runs (max_execution_batch_size only when splitting)."""
        if self.enable_large_batch_splitting:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, parameters) -> "BatchingOptions":
        """From a BatchingParameters message (serving.config_protos): unset fields keep
        TF Serving's defaults; `max_execution_batch_size` defaults to `max_batch_size`.

        Raises:
          ValueError: values TF Serving refuses, with its messages.
        """

        def value(field: str, default):
            return getattr(parameters, field).value if parameters.HasField(field) else default

        max_batch_size = value("max_batch_size", DEFAULT_MAX_BATCH_SIZE)
        return cls(
            max_batch_size=max_batch_size,
            batch_timeout_micros=value("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS),
            max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
            num_batch_threads=value("num_batch_threads", default_num_batch_threads()),
            thread_pool_name=value("thread_pool_name", "batch_threads"),
            enable_large_batch_splitting=value("enable_large_batch_splitting", False),
            max_execution_batch_size=value("max_execution_batch_size", max_batch_size),
            allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
        )


@dataclasses.dataclass(eq=False)
class _Task:
    payload: Any
    size: int
    nbytes: int
    future: asyncio.Future
    enqueued: float
    deadline: float | None  # loop time


@dataclasses.dataclass(eq=False)
class _Batch:
    key: Hashable | None
    function: BatchFunction
    created: float
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0
    nbytes: int = 0
    closed: bool = False  # takes no more tasks: full, unshareable, or superseded


@dataclasses.dataclass
class BatchStats:
    """What a batch looked like, for metrics: items, tasks, per-task queueing seconds."""

    size: int
    queue_seconds: list[float]
    run_seconds: float
    heavy: bool


class BatchScheduler:
    """Queues tasks into batches and runs each batch on one of the batch threads.

    Args:
      executor: the batch threads (`options.num_batch_threads` of them).
      options: TF Serving's batching parameters.
      unbatched_queue_limit: how many tasks that never share a batch (key None) may wait.
      heavy_task_bytes: see the module docstring.
      on_batch: called on the event loop after each batch, with its BatchStats.
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        options: BatchingOptions,
        *,
        unbatched_queue_limit: int,
        heavy_task_bytes: int = HEAVY_TASK_BYTES,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        if unbatched_queue_limit < 1:
            raise ValueError("unbatched_queue_limit must be positive")
        self.options = options
        self.unbatched_queue_limit = unbatched_queue_limit
        self.heavy_task_bytes = heavy_task_bytes
        self._executor = executor
        self._on_batch = on_batch
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._waiting_per_key: collections.Counter = collections.Counter()
        self._open: dict[Hashable, _Batch] = {}  # the batch each key may still join
        self._running = 0
        self._running_heavy = 0
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
        self,
        key: Hashable | None,
        size: int,
        payload: Any,
        function: BatchFunction,
        *,
        deadline: float | None = None,
        nbytes: int = 0,
        split: Callable[[Any, list[int]], list[Any]] | None = None,
        merge: Callable[[list[Any]], Any] | None = None,
    ) -> Any:
        """Queues one task and waits for its result.

        Args:
          key: tasks with equal keys may share a batch (and `function`); None never shares.
          size: the task's batch dimension, counted against the batch size limits.
          payload: what `function` receives, in a list with the other tasks' payloads.
          function: runs in a batch thread (see BatchFunction).
          deadline: event-loop time after which the task's run may be cancelled.
          nbytes: the size of the task's inputs, for the heavy-batch limit.
          split, merge: cut a payload into parts of the given sizes and put their results
            back together; needed for enable_large_batch_splitting.

        Raises:
          status.ServingError: INVALID_ARGUMENT for a task larger than max_batch_size,
            UNAVAILABLE when the queue is full or the server is closing.
        """
        if self._closing:
            raise status.unavailable(status.SHUTTING_DOWN)
        if key is not None and size > self.options.max_batch_size:
            raise status.invalid_argument(
                f"Task size {size} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        loop = asyncio.get_running_loop()
        sizes = self._split_sizes(key, size) if split is not None else [size]
        if len(sizes) == 1:
            return await self._enqueue(key, size, payload, function, deadline, nbytes, loop)
        parts = split(payload, sizes)
        futures = []
        for part_size, part in zip(sizes, parts, strict=True):
            part_bytes = nbytes * part_size // max(size, 1)
            futures.append(
                self._enqueue(key, part_size, part, function, deadline, part_bytes, loop)
            )
        return merge(await asyncio.gather(*futures))

    def _split_sizes(self, key: Hashable | None, size: int) -> list[int]:
        """The parts a task is split into (one part when it fits or splitting is off)."""
        options = self.options
        if key is None or not options.enable_large_batch_splitting:
            return [size]
        limit = options.max_execution_batch_size
        open_batch = self._open.get(key)
        remaining = limit - open_batch.size if open_batch is not None else 0
        if size <= (remaining or limit):
            return [size]
        free_batches = options.max_enqueued_batches - self._waiting_per_key[key]
        capacity = free_batches * limit + remaining
        if size > capacity:
            raise status.unavailable(
                "The batch scheduling queue to which this task was submitted is full; task "
                f"size is {size} but scheduling capacity is only {capacity} "
                f"(num_enqueued_batches={self._waiting_per_key[key]}, max_enqueued_batches="
                f"{options.max_enqueued_batches}, open_batch_size="
                f"{open_batch.size if open_batch else 0}, max_execution_batch_size={limit})"
            )
        sizes = [remaining] if remaining else []
        left = size - remaining
        while left > 0:
            sizes.append(min(limit, left))
            left -= sizes[-1]
        return sizes

    async def _enqueue(self, key, size, payload, function, deadline, nbytes, loop) -> Any:
        batch = self._batch_for(key, size, function, loop.time())
        task = _Task(payload, size, nbytes, loop.create_future(), loop.time(), deadline)
        batch.tasks.append(task)
        batch.size += size
        batch.nbytes += nbytes
        if batch.size >= self.options.execution_batch_size:
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
        if batch is not None and batch.size + size <= self.options.execution_batch_size:
            return batch
        if key is None:
            if self._waiting_per_key[None] >= self.unbatched_queue_limit:
                raise status.unavailable(
                    "The request queue is full; currently "
                    f"{self._waiting_per_key[None]} requests wait for a free thread"
                )
        elif self._waiting_per_key[key] >= self.options.max_enqueued_batches:
            raise status.unavailable(
                "The batch scheduling queue to which this task was submitted is full; "
                f"currently {self._waiting_per_key[key]} batches enqueued and "
                f"max_enqueued_batches is {self.options.max_enqueued_batches}"
            )
        if batch is not None:
            self._close(batch)
        batch = _Batch(key, function, now, closed=key is None)
        self._waiting.append(batch)
        self._waiting_per_key[key] += 1
        if key is not None:
            self._open[key] = batch
        return batch

    def _close(self, batch: _Batch) -> None:
        batch.closed = True
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _remove_waiting(self, batch: _Batch) -> None:
        self._waiting.remove(batch)
        self._waiting_per_key[batch.key] -= 1
        self._close(batch)

    def _withdraw(self, batch: _Batch, task: _Task) -> None:
        """Takes a cancelled task (deadline passed, client gone) out of a batch not yet run."""
        if batch in self._waiting and task in batch.tasks:
            batch.tasks.remove(task)
            batch.size -= task.size
            batch.nbytes -= task.nbytes
            if not batch.tasks:
                self._remove_waiting(batch)

    def _heavy(self, batch: _Batch) -> bool:
        return batch.nbytes > self.heavy_task_bytes

    def _ready(self, batch: _Batch, now: float) -> bool:
        if self._heavy(batch) and self._running_heavy >= max(1, self.options.num_batch_threads - 1):
            return False
        timeout = self.options.batch_timeout_micros / 1e6
        return self._closing or batch.closed or now - batch.created >= timeout

    def _dispatch(self) -> None:
        """Starts ready batches on free threads; arms a timer for the next one to ripen."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._running < self.options.num_batch_threads and self._waiting:
            batch = next((b for b in self._waiting if self._ready(b, now)), None)
            if batch is None:
                break
            self._remove_waiting(batch)
            self._start(batch, now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting and self._running < self.options.num_batch_threads:
            timeout = self.options.batch_timeout_micros / 1e6
            deadline = min(batch.created for batch in self._waiting) + timeout
            if deadline > now:
                self._timer = loop.call_at(deadline, self._dispatch)
        if self._idle is not None and not self._waiting and not self._running:
            self._idle.set()

    def _start(self, batch: _Batch, now: float) -> None:
        live = [task for task in batch.tasks if not task.future.done()]
        if not live:
            return
        batch.tasks = live
        deadlines = [task.deadline for task in live]
        timeout = None if None in deadlines else max(0.001, max(deadlines) - now)
        heavy = self._heavy(batch)
        self._running += 1
        self._running_heavy += heavy
        queue_seconds = [now - task.enqueued for task in live]
        payloads = [task.payload for task in live]
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, _run_batch, batch.function, payloads, timeout, heavy
        )

        def finished(done: asyncio.Future) -> None:
            self._running -= 1
            self._running_heavy -= heavy
            self._deliver(batch, done)
            if self._on_batch is not None:
                stats = BatchStats(batch.size, queue_seconds, time.perf_counter() - started, heavy)
                self._on_batch(stats)
            self._dispatch()

        future.add_done_callback(finished)

    @staticmethod
    def _deliver(batch: _Batch, done: asyncio.Future) -> None:
        error = done.exception() if not done.cancelled() else status.unavailable("Cancelled")
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

    def cancel_waiting(self, error: BaseException) -> int:
        """Fails every task that has not started with `error`; returns how many."""
        self._closing = True
        cancelled = 0
        while self._waiting:
            batch = self._waiting[0]
            self._remove_waiting(batch)
            for task in batch.tasks:
                if not task.future.done():
                    task.future.set_exception(error)
                    cancelled += 1
        return cancelled


def _run_batch(function: BatchFunction, payloads: list, timeout: float | None, heavy: bool):
    try:
        return function(payloads, timeout)
    finally:
        if heavy:
            release_free_memory()


_LIBC = None


def release_free_memory() -> None:
    """Returns freed heap pages to the system (glibc's malloc_trim), after a heavy batch.

    glibc keeps freed memory in its arenas; after one request decoded hundreds of megabytes,
    that would stay charged to the process. A no-op where there is no glibc.
    """
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name) if name else False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)


# -------------------------------------------------------------------------------------------
# Concatenating requests into a batch and splitting the outputs back.


def batch_size_of(tensors: dict[str, np.ndarray]) -> int | None:
    """The shared first dimension of all inputs, or None when they do not share one."""
    sizes = {np.shape(value)[0] if np.ndim(value) else None for value in tensors.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()


def nbytes_of(tensors: dict[str, np.ndarray]) -> int:
    """The bytes the input tensors hold (string tensors: the bytes of their items)."""
    total = 0
    for value in tensors.values():
        array = np.asarray(value)
        if array.dtype == object:
            total += sum(len(item) for item in array.reshape(-1) if isinstance(item, bytes))
        else:
            total += array.nbytes
    return total


def batch_key(prefix: Hashable, tensors: dict[str, np.ndarray]) -> Hashable:
    """Tasks can share a batch when names, dtypes and all but the first dimension agree."""
    layout = tuple(
        sorted((name, value.dtype.str, np.shape(value)[1:]) for name, value in tensors.items())
    )
    return (prefix, layout)


def split_tensors(tensors: dict[str, np.ndarray], sizes: list[int]) -> list[dict]:
    """Cuts every input along its first dimension into parts of `sizes`."""
    bounds = np.cumsum([0] + sizes)
    return [
        {name: value[start:end] for name, value in tensors.items()}
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def concatenate_outputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of a split task, put back together along the first dimension."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def run_batched(
    function: Callable[[dict[str, np.ndarray], float | None], dict[str, np.ndarray]],
    payloads: list[dict[str, np.ndarray]],
    timeout: float | None,
    allowed_batch_sizes: Sequence[int] = (),
) -> list[Any]:
    """Runs `function` once on the concatenated inputs and splits its outputs per payload.

    The batch is padded up to the next of `allowed_batch_sizes` with copies of its first
    item (batching_session.cc); the padding is cut from the outputs. If the combined call
    fails, each payload runs on its own, so one bad request (say, bytes that are not an
    image) fails alone instead of failing everyone it was batched with.
    """
    sizes = [batch_size_of(payload) for payload in payloads]
    total = sum(sizes)
    padded = next((size for size in allowed_batch_sizes if size >= total), total)
    if len(payloads) == 1 and padded == total:
        return [_outcome(function, payloads[0], timeout)]
    combined = {
        name: _padded(np.concatenate([payload[name] for payload in payloads]), padded)
        for name in payloads[0]
    }
    try:
        outputs = function(combined, timeout)
    except status.ServingError as error:
        if error.code in (status.Code.DEADLINE_EXCEEDED, status.Code.CANCELLED):
            return [error] * len(payloads)
        logger.info(
            "A batch of %d requests failed (%s); running them one by one", len(payloads), error
        )
        return [_outcome(function, payload, timeout) for payload in payloads]
    if any(np.ndim(value) == 0 or np.shape(value)[0] != padded for value in outputs.values()):
        return [_outcome(function, payload, timeout) for payload in payloads]
    bounds = np.cumsum([0] + sizes)
    return [
        {name: value[start:end] for name, value in outputs.items()}
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] >= size:
        return array
    padding = np.repeat(array[:1], size - array.shape[0], axis=0)
    return np.concatenate([array, padding])


def _outcome(function: Callable, payload: Any, timeout: float | None) -> Any:
    try:
        return function(payload, timeout)
    except Exception as error:  # handed to the task that sent this payload
        return error
