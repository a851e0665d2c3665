"""The HTTP side of `happysad serve`: TF Serving's REST endpoints on aiohttp.

Routes follow tensorflow_serving/model_servers/http_rest_api_util.cc:

    GET  /v1/models/{name}[/versions/{v}][/metadata]
    POST /v1/models/{name}[/versions/{v}]:(predict|classify|regress)

plus `/monitoring/prometheus/metrics`, and two endpoints TF Serving lacks: `/readyz` (200
only while a version is AVAILABLE, for load balancers and Kubernetes readiness probes) and
`/healthz` (200 while the process serves HTTP). Every failure is `{"error": "..."}` with the
HTTP status TF Serving maps its error code to; no stack trace ever reaches a client.
"""

import asyncio
import dataclasses
import functools
import logging
import re
import time
from typing import Any

import orjson
from aiohttp import web

from serving import batching, model_manager, status, tensor_json
from serving import metrics as metrics_lib

logger = logging.getLogger(__name__)

PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
JSON_CONTENT_TYPE = "application/json"
READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
# Bodies above this are parsed off the event loop, so a huge request cannot stall the others.
INLINE_PARSE_BYTES = 256 * 1024


class RestApi:
    """Request handlers bound to one model manager and one batch scheduler."""

    def __init__(
        self,
        manager: model_manager.ModelManager,
        scheduler: batching.BatchScheduler,
        metrics: metrics_lib.ServerMetrics,
        *,
        max_request_bytes: int,
        request_timeout_seconds: float,
        batching_enabled: bool,
    ):
        self.manager = manager
        self.scheduler = scheduler
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.request_timeout_seconds = request_timeout_seconds
        self.batching_enabled = batching_enabled
        self.draining = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{v1:[vV]1}/{tail:.*}", self.handle_api)  # TF Serving: (?i)
        app.router.add_get(metrics_lib.PATH, self.handle_metrics)
        app.router.add_get(READY_PATH, self.handle_ready)
        app.router.add_get(HEALTH_PATH, self.handle_health)
        app.router.add_route("*", "/{tail:.*}", self.handle_unknown)

    # -- TF Serving's API ----------------------------------------------------------------

    async def handle_api(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        call = _Call()
        try:
            answer = await self._answer(request, call)
            response = web.Response(body=answer, content_type=JSON_CONTENT_TYPE)
            outcome = status.Code.OK
        except status.ServingError as error:
            response, outcome = _error_response(error), error.code
        except Exception as error:  # a bug: logged with its traceback, reported without it
            logger.exception("Internal error serving %s %s", request.method, request.path)
            failure = status.ServingError(
                status.Code.INTERNAL, f"Internal error: {type(error).__name__}: {error}"
            )
            response, outcome = _error_response(failure), failure.code
        # Only the served name becomes a label: arbitrary URLs must not grow the metrics.
        label = call.model_name if call.model_name == self.manager.model_name else ""
        self.metrics.request_count.inc(model_name=label, status=outcome.name)
        self.metrics.request_latency.observe(
            (time.perf_counter() - started) * 1e6, model_name=label, API=call.api, entrypoint="REST"
        )
        return response

    async def _answer(self, request: web.Request, call: "_Call") -> bytes:
        """The JSON answer of one API call (TF Serving's dispatch: method, then path)."""
        if request.method == "POST":
            match = PREDICTION_PATH.fullmatch(request.path)
            if match is None:
                raise _malformed(request)
            call.model_name, version_text, label, api = match.groups()
            call.api = api.lower()
            version = _version(version_text, label)
            body = await self._read_body(request)
            return await self._predict_classify_regress(call.api, call.model_name, version, body)
        if request.method == "GET":
            match = STATUS_PATH.fullmatch(request.path)
            if match is None:
                raise _malformed(request)
            call.model_name, version_text, label, subresource = match.groups()
            if not call.model_name:
                raise status.invalid_argument("Missing model name in request.")
            version = _version(version_text, label)
            if subresource:
                call.api = "metadata"
                return orjson.dumps(self._servable(call.model_name, version).metadata())
            call.api = "status"
            return orjson.dumps(self.manager.status(call.model_name, version))
        raise _malformed(request)

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise _too_large(length, self.max_request_bytes)
        chunks, total = [], 0
        try:
            async for chunk in request.content.iter_any():
                total += len(chunk)
                if total > self.max_request_bytes:
                    raise _too_large(None, self.max_request_bytes)
                chunks.append(chunk)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            raise status.invalid_argument(f"Could not read the request body: {error}") from None
        return b"".join(chunks)

    def _servable(self, model_name: str, version: int | None):
        return self.manager.servable(model_name, version)

    async def _predict_classify_regress(
        self, api: str, model_name: str, version: int | None, body: bytes
    ) -> bytes:
        if len(body) > INLINE_PARSE_BYTES:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                None, functools.partial(self._prepare, api, model_name, version, body)
            )
        else:
            prepared = self._prepare(api, model_name, version, body)
        servable, signature_name, payload, request_format = prepared
        if api == "predict":
            outputs = await self._run_predict(servable, signature_name, payload)
            return tensor_json.predict_response(outputs, request_format)
        if api == "classify":
            labels, scores = await self._run_one(
                functools.partial(servable.classify, signature_name, payload)
            )
            return tensor_json.classify_response(labels, scores)
        values = await self._run_one(functools.partial(servable.regress, signature_name, payload))
        return tensor_json.regress_response(values)

    def _prepare(
        self, api: str, model_name: str, version: int | None, body: bytes
    ) -> tuple[Any, str, Any, str]:
        """Parses the body against the signature it names (TF Serving's order of checks)."""
        document = tensor_json.load_document(body)
        signature_name = tensor_json.signature_name(document)
        if api == "predict":
            servable = self._servable(model_name, version)
            parsed = tensor_json.parse_predict_inputs(
                document, servable.input_dtypes(signature_name)
            )
            return servable, signature_name, parsed.tensors, parsed.format
        examples = tensor_json.parse_examples(document)
        return self._servable(model_name, version), signature_name, examples, ""

    async def _run_predict(self, servable, signature_name: str, tensors: dict) -> dict:
        size = batching.batch_size_of(tensors)
        function = functools.partial(servable.predict, signature_name)
        if self.batching_enabled and size is not None and servable.batchable(signature_name):
            key = batching.batch_key(
                (servable.model_name, servable.version, signature_name), tensors
            )
            batch_function = functools.partial(batching.run_batched, function)
            return await self._submit(key, size, tensors, batch_function)
        return await self._submit(None, size or 1, tensors, _one_by_one(function))

    async def _run_one(self, call) -> Any:
        return await self._submit(None, 1, None, _one_by_one(lambda _: call()))

    async def _submit(self, key, size: int, payload: Any, function) -> Any:
        try:
            result = await asyncio.wait_for(
                self.scheduler.submit(key, size, payload, function),
                timeout=self.request_timeout_seconds,
            )
        except TimeoutError:
            raise status.ServingError(status.Code.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self.metrics.queued_tasks.set(
                self.scheduler.queued_tasks, model_name=self.manager.model_name
            )
        return result

    # -- operations endpoints ------------------------------------------------------------

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render().encode("utf-8"),
            headers={"Content-Type": metrics_lib.CONTENT_TYPE},
        )

    async def handle_ready(self, request: web.Request) -> web.Response:
        versions = self.manager.available_versions
        ready = bool(versions) and not self.draining
        body = {
            "ready": ready,
            "model_name": self.manager.model_name,
            "available_versions": [str(version) for version in versions],
        }
        if self.draining:
            body["reason"] = "shutting down"
        elif not versions:
            body["reason"] = "no version of the model is AVAILABLE"
        return web.Response(
            body=orjson.dumps(body), status=200 if ready else 503, content_type=JSON_CONTENT_TYPE
        )

    async def handle_unknown(self, request: web.Request) -> web.Response:
        return web.Response(
            body=tensor_json.error_body(f"Not found: {request.method} {request.path}"),
            status=404,
            content_type=JSON_CONTENT_TYPE,
        )

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status": "ok"}', content_type=JSON_CONTENT_TYPE)


@dataclasses.dataclass
class _Call:
    """What a request turned out to be, for its metrics."""

    api: str = "unknown"
    model_name: str = ""


def _one_by_one(function):
    """A batch function for tasks that never share a batch."""
    return functools.partial(batching.run_batched, function)


def _version(version_text: str | None, label: str | None) -> int | None:
    if label:
        raise status.invalid_argument(f"Unrecognized servable version label: {label}")
    if version_text is None:
        return None
    try:
        return int(version_text)
    except ValueError:
        raise status.invalid_argument(
            f"Failed to convert version: {version_text} to numeric."
        ) from None


def _malformed(request: web.Request) -> status.ServingError:
    return status.invalid_argument(f"Malformed request: {request.method} {request.path}")


def _too_large(length: int | None, limit: int) -> status.ServingError:
    """RESOURCE_EXHAUSTED, answered as HTTP 413 (Content Too Large) so clients do not retry."""
    size = f"{length} bytes" if length is not None else "more bytes"
    return status.ServingError(
        status.Code.RESOURCE_EXHAUSTED,
        f"Request body of {size} is larger than the server's limit of {limit} bytes "
        "(--max_request_bytes)",
        http_status=413,
    )


def _error_response(error: status.ServingError) -> web.Response:
    # An overloaded or draining server tells clients when to come back.
    headers = {"Retry-After": "1"} if error.code == status.Code.UNAVAILABLE else None
    return web.Response(
        body=tensor_json.error_body(error.message),
        status=error.http_status,
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )
