"""The local runner: Beam's portable FnApiRunner with a defect of Beam 2.77 worked around.

What DirectRunner falls back to offline (see pipeline.data.beam_options), built the same way.
With worker processes (`--direct_running_mode=multi_processing`, any `--direct_num_workers`),
the runner sends each bundle's input to its worker through a gRPC data stream that a timer
thread flushes every DATA_BUFFER_TIME_LIMIT_MS (1,000 ms): the flush copies the buffer, waits
for room in the 100 MB send queue, then clears the buffer, while the runner's own thread goes
on writing the input into it (`TimeBasedBufferingClosableOutputStream.write` does not take the
stream's flush lock). Whatever was written during that wait is cleared unsent, and the worker
finishes the bundle without those elements and without an error. A stage whose input is
large and materialized (TFDS's writer counts and shards every example before writing) loses
whole chunks of it: 5,000 elements of 192 KB through one such stage arrived as 4,390, 4,822,
4,892 or 5,000 (six runs of eight lost some); `happysad build` of 20,000 photos published
10,692 of 16,000 training examples. With the limit at 0 the stream is flushed only by the
thread that writes it (size-based, as the SDK workers' own streams are), and the same
pipeline delivered every element in eight runs of eight.

The limit is a module constant read when the runner starts its gRPC server, so LocalRunner
sets it to 0 for the duration of its own runs and restores it afterwards.
"""

import contextlib
import threading

from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers

_LIMIT_LOCK = threading.Lock()
_runs = {"active": 0, "previous": None}  # LocalRunner runs in progress in this process


class LocalRunner(fn_runner.FnApiRunner):
    """FnApiRunner whose runner-to-worker data streams are never flushed by a timer thread."""

    def run_pipeline(self, pipeline, options):
        """Runs `pipeline` as FnApiRunner does, with the time-based flush off (module doc)."""
        with _size_based_data_streams():
            return super().run_pipeline(pipeline, options)


@contextlib.contextmanager
def _size_based_data_streams():
    """The limit at 0 while any LocalRunner run is in progress (runs may overlap or nest)."""
    with _LIMIT_LOCK:
        if _runs["active"] == 0:
            _runs["previous"] = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
            worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
        _runs["active"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _runs["active"] -= 1
            if _runs["active"] == 0:
                worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = _runs["previous"]
