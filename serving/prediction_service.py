"""What REST and gRPC share: finding the servable, running it through the batch scheduler,
metadata and status, and TF Serving's metrics of each request.

Both APIs turn their request into numpy tensors (REST from JSON, gRPC from TensorProtos),
then call this service, so a model behaves the same whichever API a client uses, and both
share one version manager and one batch scheduler, as in tensorflow_model_server.
"""

import asyncio
import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving import batching, server_core, status
from serving import metrics as metrics_lib
from serving import servable as servable_lib

SIGNATURE_DEF_FIELD = "signature_def"
RUNTIME = "TF1"  # TF Serving's runtime label for Session-based servables
_FLOAT_DTYPES = ("f", "c")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which servable a request asks for (tensorflow.serving.ModelSpec, unpacked)."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


class PredictionService:
    """Runs requests against the servables of a ServerCore.

    Args:
      core: the models and their versions.
      scheduler: the batch scheduler (batching on) or the plain request queue (off); may be
        set after construction (the scheduler reports its batches to `on_batch`).
      metrics: where request, runtime and batching metrics go.
      batching: whether requests of one signature share batches.
      allowed_batch_sizes, thread_pool_name: BatchingParameters that shape batches and
        label the queuing metric.
      allow_non_finite_inputs: whether NaN and Infinity may reach a float input.
    """

    def __init__(
        self,
        core: server_core.ServerCore,
        scheduler: batching.BatchScheduler | None,
        metrics: metrics_lib.ServerMetrics,
        *,
        batching_enabled: bool,
        allowed_batch_sizes: Sequence[int] = (),
        thread_pool_name: str = batching.DEFAULT_THREAD_POOL_NAME,
        allow_non_finite_inputs: bool = False,
    ):
        self.core = core
        self.scheduler = scheduler
        self.metrics = metrics
        self.batching_enabled = batching_enabled
        self.allowed_batch_sizes = tuple(allowed_batch_sizes)
        self.thread_pool_name = thread_pool_name
        self.allow_non_finite_inputs = allow_non_finite_inputs

    # -- lookups -------------------------------------------------------------------------

    def resolve(self, spec: ModelSpec) -> servable_lib.Servable:
        """The servable a ModelSpec names (see ServerCore.servable)."""
        return self.core.servable(spec.name, spec.version, spec.label)

    def metadata(
        self, spec: ModelSpec, fields: Sequence[str] = (SIGNATURE_DEF_FIELD,)
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadataResponse (get_model_metadata_impl.cc): signature defs only.

        Raises:
          status.ServingError: INVALID_ARGUMENT for no or unsupported fields, NOT_FOUND
            when nothing serves the spec.
        """
        if not fields:
            raise status.invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise status.invalid_argument(f"Metadata field {field} is not supported")
        servable = self.resolve(spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
        return response

    def status(self, spec: ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusResponse; a label is ignored, as in TF Serving (every version)."""
        return self.core.status(spec.name, spec.version)

    def metric_label(self, model_name: str) -> str:
        """The model name as a metric label: only configured names, so that arbitrary
        request names cannot grow the metrics without bound."""
        return model_name if self.core.serves(model_name) else ""

    def record(self, model_name: str, api: str, entrypoint: str, code, seconds: float) -> None:
        """TF Serving's request metrics: every request counted, successes timed."""
        label = self.metric_label(model_name)
        self.metrics.request_count.inc(model_name=label, status=status.Code(code).name)
        if code == status.Code.OK:
            self.metrics.request_latency.observe(
                seconds * 1e6, model_name=label, API=api, entrypoint=entrypoint
            )

    # -- calls ---------------------------------------------------------------------------

    async def predict(
        self,
        servable: servable_lib.Servable,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str] = (),
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a Predict call, batched with others when batching is on and it can be.

        Raises:
          status.ServingError: TF Serving's errors (see Servable.predict and the batch
            scheduler), NaN/Infinity in a float input (INVALID_ARGUMENT), DEADLINE_EXCEEDED.
        """
        servable.signature(signature_name)  # FAILED_PRECONDITION before anything else
        if not self.allow_non_finite_inputs:
            _check_finite(inputs)
        output_filter = tuple(output_filter)
        size = batching.batch_size_of(inputs) if inputs else None
        name = signature_name or servable_lib.DEFAULT_SIGNATURE

        def call(tensors: dict, timeout: float | None) -> dict:
            started = time.perf_counter()
            outputs = servable.predict(name, tensors, output_filter, timeout)
            self._runtime(servable, "Predict", started)
            return outputs

        nbytes = batching.nbytes_of(inputs)
        if self.batching_enabled and size is not None and servable.batchable(name):
            key = batching.batch_key((id(servable), name, output_filter), inputs)
            function = functools.partial(
                batching.run_batched, call, allowed_batch_sizes=self.allowed_batch_sizes
            )
            return await self._submit(
                key,
                size,
                inputs,
                function,
                deadline,
                nbytes,
                split=batching.split_tensors,
                merge=batching.concatenate_outputs,
            )
        return await self._submit(None, size or 1, inputs, _single(call), deadline, nbytes)

    async def classify(
        self,
        servable: servable_lib.Servable,
        signature_name: str,
        examples: Sequence[bytes],
        deadline: float | None = None,
    ) -> tuple[Any, Any]:
        """Runs a Classify call on serialized tf.Examples; returns (labels, scores)."""
        return await self._examples_call(
            servable, "Classify", servable.classify, signature_name, examples, deadline
        )

    async def regress(
        self,
        servable: servable_lib.Servable,
        signature_name: str,
        examples: Sequence[bytes],
        deadline: float | None = None,
    ) -> np.ndarray:
        """Runs a Regress call on serialized tf.Examples; returns float32 [n]."""
        return await self._examples_call(
            servable, "Regress", servable.regress, signature_name, examples, deadline
        )

    async def multi_inference(
        self,
        servable: servable_lib.Servable,
        tasks: Sequence[tuple[str, str]],
        examples: Sequence[bytes],
        deadline: float | None = None,
    ) -> list[tuple[str, Any]]:
        """Runs a MultiInference call (classify and regress tasks on the same examples)."""
        return await self._examples_call(
            servable, "MultiInference", servable.multi_inference, tasks, examples, deadline
        )

    async def _examples_call(self, servable, api, method, first, examples, deadline) -> Any:
        """A call on tf.Examples: counted, timed as runtime, run on its own."""
        self.metrics.request_example_counts.observe(len(examples), model=servable.model_name)
        self.metrics.request_example_count_total.inc(len(examples), model=servable.model_name)

        def call(_, timeout):
            started = time.perf_counter()
            result = method(first, examples, timeout)
            self._runtime(servable, api, started)
            return result

        return await self._submit(None, len(examples), None, _single(call), deadline, 0)

    async def _submit(self, key, size, payload, function, deadline, nbytes, **splitting) -> Any:
        loop = asyncio.get_running_loop()
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            raise status.deadline_exceeded()
        submission = self.scheduler.submit(
            key, size, payload, function, deadline=deadline, nbytes=nbytes, **splitting
        )
        try:
            return await asyncio.wait_for(submission, timeout=remaining)
        except TimeoutError:
            raise status.deadline_exceeded() from None

    def _runtime(self, servable: servable_lib.Servable, api: str, started: float) -> None:
        self.metrics.runtime_latency.observe(
            (time.perf_counter() - started) * 1e6,
            model_name=servable.model_name,
            API=api,
            runtime=RUNTIME,
        )

    def on_batch(self, stats: batching.BatchStats) -> None:
        """Batch scheduler callback: TF Serving's batching-session metrics."""
        self.metrics.wrapped_run_count.inc()
        for seconds in stats.queue_seconds:
            self.metrics.batching_queuing_latency.observe(
                seconds * 1e6, thread_pool_name=self.thread_pool_name
            )


def _check_finite(inputs: dict[str, np.ndarray]) -> None:
    for name, value in sorted(inputs.items()):
        array = np.asarray(value)
        if array.dtype.kind in _FLOAT_DTYPES and array.size and not np.isfinite(array).all():
            raise status.invalid_argument(
                f"input tensor {name} holds NaN or Infinity; only finite values are accepted "
                "(--allow_non_finite_inputs)"
            )


def _single(call):
    """A batch function for tasks that never share a batch: each payload on its own."""

    def function(payloads: list, timeout: float | None) -> list:
        results = []
        for payload in payloads:
            try:
                results.append(call(payload, timeout))
            except Exception as error:  # handed to the task that sent this payload
                results.append(error)
        return results

    return function
