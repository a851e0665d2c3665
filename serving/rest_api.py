"""The HTTP side of `happysad serve`: TF Serving's REST API on aiohttp.

Routes and dispatch follow tensorflow_serving/model_servers/http_rest_api_util.cc and
http_rest_api_handler.cc:

    GET  /v1/models/{name}[/versions/{v} | /labels/{label}][/metadata]
    POST /v1/models/{name}[/versions/{v} | /labels/{label}]:(predict|classify|regress)

plus Prometheus metrics at the `--monitoring_config_file` path (only when it enables them),
CORS headers and preflight `OPTIONS` with `--rest_api_enable_cors_support`, and two
endpoints TF Serving lacks: `/readyz` (200 only while every model has an AVAILABLE version
and the server is not shutting down: for load balancers and Kubernetes readiness probes) and
`/healthz` (200 while the process serves HTTP). Every failure is `{"error": "..."}` with the
HTTP status TF Serving maps its error code to; no stack trace ever reaches a client.

Bodies are bounded: `--max_request_bytes` (413, at once for `Expect: 100-continue`), a
timeout between reads (408), chunked or plain framing only (any other Transfer-Encoding is
501). Shutting down, the API first drains (`/readyz` 503, every response closes its
connection) and then stops (new requests 503) while the requests in flight finish. Each
request is one rate-limited line of the `serving.access` log.
"""

import asyncio
import dataclasses
import logging
import re
import time
import urllib.parse
from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format

from serving import batching, logs, prediction_service, status, tensor_json
from serving import metrics as metrics_lib

logger = logging.getLogger(__name__)

# http_rest_api_util.cc: kPredictionApiGegex and kModelStatusApiRegex, case-insensitive.
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
# http_rest_api_util.cc AddCORSHeaders.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_ORIGIN = re.compile(r"https?://")
# Bodies above this are parsed off the event loop, so a huge request cannot stall the others.
INLINE_PARSE_BYTES = 256 * 1024
# After a body this large, freed heap memory is handed back to the system.
LARGE_BODY_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass
class _Call:
    """What a request turned out to be, for its metrics."""

    api: str = ""
    model_name: str = ""


class RestApi:
    """Request handlers over one PredictionService.

    Args:
      service: the shared request logic.
      max_request_bytes: largest body (413 above).
      timeout_seconds: each call's deadline (--rest_api_timeout_in_ms; 0: none).
      body_timeout_seconds: longest wait between two reads of a body (408 past it).
      cors: --rest_api_enable_cors_support.
      metrics_path: where Prometheus metrics are served, or None.
    """

    def __init__(
        self,
        service: prediction_service.PredictionService,
        *,
        max_request_bytes: int,
        timeout_seconds: float,
        body_timeout_seconds: float = 60.0,
        cors: bool = False,
        metrics_path: str | None = None,
    ):
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.timeout_seconds = timeout_seconds
        self.body_timeout_seconds = body_timeout_seconds
        self.cors = cors
        self.metrics_path = metrics_path
        self.draining = False  # not ready; responses close their connections
        self.stopping = False  # new requests are refused
        self.in_flight = 0
        self.access = logs.access_logger()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every HTTP request: routed, answered, its connection closed when shutting down."""
        started = time.perf_counter()
        self.in_flight += 1
        try:
            response = await self._route(request)
        finally:
            self.in_flight -= 1
        if self.draining or self.stopping or not request.content.is_eof():
            response.force_close()  # the client must not reuse (or finish sending on) it
        self.access.info(
            '%s "%s %s" %d %.1f ms',
            request.remote,
            request.method,
            status.bounded(request.path)[:200],
            response.status,
            (time.perf_counter() - started) * 1000,
        )
        return response

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if self.stopping:
            return self.error_response(status.unavailable(status.SHUTTING_DOWN))
        if path == self.metrics_path and request.method == "GET":
            return await self.handle_metrics(request)
        if path[:4].lower() == "/v1/":  # TF Serving's (?i)/v1/.*
            return await self.handle_api(request)
        if path == READY_PATH and request.method == "GET":
            return await self.handle_ready(request)
        if path == HEALTH_PATH and request.method == "GET":
            return await self.handle_health(request)
        return await self.handle_unknown(request)

    # -- TF Serving's API ----------------------------------------------------------------

    async def handle_api(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        call = _Call()
        try:
            if request.method == "OPTIONS":
                body = self._preflight(request)
            else:
                body = await self._answer(request, call)
            response = self.json_response(body)
            outcome = status.Code.OK
        except status.ServingError as error:
            response, outcome = self.error_response(error), error.code
        except Exception as error:  # a bug: logged with its traceback, reported without it
            logger.exception("Internal error serving %s %s", request.method, request.path)
            failure = status.ServingError(
                status.Code.INTERNAL, f"Internal error: {type(error).__name__}: {error}"
            )
            response, outcome = self.error_response(failure), failure.code
        self.service.record(
            call.model_name, call.api, "REST", outcome, time.perf_counter() - started
        )
        return response

    @staticmethod
    def _preflight(request: web.BaseRequest) -> bytes:
        if _ORIGIN.match(request.headers.get("Origin", "")):
            return b""
        raise status.failed_precondition("Origin header is missing in CORS preflight")

    async def _answer(self, request: web.BaseRequest, call: _Call) -> bytes:
        """The JSON answer of one API call (TF Serving's dispatch: method, then path)."""
        path = request.rel_url.raw_path
        if request.method == "POST":
            match = PREDICTION_PATH.fullmatch(path)
            if match is None:
                raise _malformed(request)
            name, version_text, label, api = match.groups()
            call.model_name, call.api = _unquote(name), api
            spec = prediction_service.ModelSpec(
                call.model_name, _version(version_text), _unquote(label)
            )
            body = await self.read_body(request)
            return await self._predict_classify_regress(api.lower(), spec, body)
        if request.method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if match is None:
                raise _malformed(request)
            name, version_text, label, subresource = match.groups()
            call.model_name = _unquote(name) if name else ""
            if not call.model_name:
                raise status.invalid_argument("Missing model name in request.")
            spec = prediction_service.ModelSpec(
                call.model_name, _version(version_text), _unquote(label)
            )
            if subresource:
                return _metadata_json(self.service.metadata(spec))
            return orjson.dumps(
                json_format.MessageToDict(
                    self.service.status(spec), always_print_fields_with_no_presence=True
                )
            )
        raise _malformed(request)

    async def read_body(self, request: web.BaseRequest) -> bytes:
        """The whole body: 413 past max_request_bytes (before `100 Continue` is sent), 408
        when the client stops sending, 501 for a Transfer-Encoding other than chunked."""
        encoding = request.headers.get("Transfer-Encoding")
        if encoding is not None and encoding.strip().lower() != "chunked":
            raise status.unimplemented(
                f"Transfer-Encoding {encoding!r} is not supported; send the body plain or chunked"
            )
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise too_large(length, self.max_request_bytes)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks, total = [], 0
        try:
            while True:
                async with asyncio.timeout(self.body_timeout_seconds):
                    chunk = await request.content.readany()
                if not chunk:
                    break
                total += len(chunk)
                if total > self.max_request_bytes:
                    raise too_large(None, self.max_request_bytes)
                chunks.append(chunk)
        except TimeoutError:
            raise status.ServingError(
                status.Code.DEADLINE_EXCEEDED,
                f"The request body stopped arriving for {self.body_timeout_seconds:g} s "
                "(--rest_api_body_timeout_seconds)",
                http_status=408,
            ) from None
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            raise status.invalid_argument(f"Could not read the request body: {error}") from None
        return b"".join(chunks)

    def _deadline(self) -> float | None:
        if self.timeout_seconds <= 0:
            return None
        return asyncio.get_running_loop().time() + self.timeout_seconds

    async def _predict_classify_regress(
        self, api: str, spec: prediction_service.ModelSpec, body: bytes
    ) -> bytes:
        deadline = self._deadline()
        if len(body) > INLINE_PARSE_BYTES:
            loop = asyncio.get_running_loop()
            parsed = await loop.run_in_executor(None, _parse, api, self.service, spec, body)
        else:
            parsed = _parse(api, self.service, spec, body)
        servable, signature_name, payload, request_format = parsed
        if len(body) > LARGE_BODY_BYTES:  # the parsed document is gone: hand its heap back
            asyncio.get_running_loop().run_in_executor(None, batching.release_free_memory)
        service = self.service
        if api == "predict":
            outputs = await service.predict(servable, signature_name, payload, (), deadline)
            return tensor_json.predict_response(outputs, request_format)
        if api == "classify":
            labels, scores = await service.classify(servable, signature_name, payload, deadline)
            return tensor_json.classify_response(labels, scores)
        values = await service.regress(servable, signature_name, payload, deadline)
        return tensor_json.regress_response(values)

    # -- responses -----------------------------------------------------------------------

    def json_response(self, body: bytes, http_status: int = 200, headers=None) -> web.Response:
        all_headers = dict(CORS_HEADERS) if self.cors else {}
        all_headers.update(headers or {})
        return web.Response(
            body=body, status=http_status, content_type=JSON_CONTENT_TYPE, headers=all_headers
        )

    def error_response(self, error: status.ServingError) -> web.Response:
        # An overloaded or draining server tells clients when to come back.
        headers = {"Retry-After": "1"} if error.code == status.Code.UNAVAILABLE else None
        return self.json_response(tensor_json.error_body(error.message), error.http_status, headers)

    # -- operations endpoints ------------------------------------------------------------

    async def handle_metrics(self, request: web.BaseRequest) -> web.Response:
        return web.Response(
            body=self.service.metrics.render().encode("utf-8"),
            headers={"Content-Type": metrics_lib.CONTENT_TYPE},
        )

    async def handle_ready(self, request: web.BaseRequest) -> web.Response:
        available = self.service.core.available()
        missing = sorted(name for name, versions in available.items() if not versions)
        ready = bool(available) and not missing and not self.draining and not self.stopping
        body: dict[str, Any] = {
            "ready": ready,
            "models": {
                name: [str(version) for version in versions]
                for name, versions in sorted(available.items())
            },
        }
        if self.draining or self.stopping:
            body["reason"] = "shutting down"
        elif missing:
            body["reason"] = f"no version AVAILABLE for {', '.join(missing)}"
        return self.json_response(orjson.dumps(body), 200 if ready else 503)

    async def handle_health(self, request: web.BaseRequest) -> web.Response:
        return self.json_response(b'{"status": "ok"}')

    async def handle_unknown(self, request: web.BaseRequest) -> web.Response:
        message = status.bounded(f"Not found: {request.method} {request.path}")
        return self.json_response(tensor_json.error_body(message), 404)


def _parse(api: str, service, spec, body: bytes) -> tuple[Any, str, Any, str]:
    """(servable, signature name, tensors or examples, format) of a body, checked in TF
    Serving's order: the JSON, then the servable, then the inputs against its signature."""
    document = tensor_json.load_document(body)
    signature_name = tensor_json.signature_name(document)
    if api == "predict":
        servable = service.resolve(spec)
        parsed = tensor_json.parse_predict_inputs(document, servable.input_dtypes(signature_name))
        return servable, signature_name, parsed.tensors, parsed.format
    examples = tensor_json.parse_examples(document)
    return service.resolve(spec), signature_name, examples, ""


def _metadata_json(response) -> bytes:
    """GetModelMetadataResponse as TF Serving's REST API writes it (http_rest_api_util.cc)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[prediction_service.SIGNATURE_DEF_FIELD].Unpack(signature_map)
    return orjson.dumps(
        {
            "model_spec": json_format.MessageToDict(
                response.model_spec,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
            },
        }
    )


def _unquote(text: str | None) -> str | None:
    return None if text is None else urllib.parse.unquote(text)


def _version(version_text: str | None) -> int | None:
    if version_text is None:
        return None
    try:
        version = int(version_text)
    except ValueError:
        version = None
    if version is None or version > 2**63 - 1:
        raise status.invalid_argument(f"Failed to convert version: {version_text} to numeric.")
    return version


def _malformed(request: web.BaseRequest) -> status.ServingError:
    return status.invalid_argument(f"Malformed request: {request.method} {request.path}")


def too_large(length: int | None, limit: int) -> status.ServingError:
    """RESOURCE_EXHAUSTED, answered as HTTP 413 (Content Too Large) so clients do not retry."""
    size = f"{length} bytes" if length is not None else "more bytes"
    return status.ServingError(
        status.Code.RESOURCE_EXHAUSTED,
        f"Request body of {size} is larger than the server's limit of {limit} bytes "
        "(--max_request_bytes)",
        http_status=413,
    )
