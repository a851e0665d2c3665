"""TF Serving's gRPC API on grpcio's asyncio server, with tensorflow-serving-api's services.

PredictionService (Predict, Classify, Regress, MultiInference, GetModelMetadata) and
ModelService (GetModelStatus, HandleReloadConfigRequest) behave as
tensorflow_serving/model_servers/prediction_service_impl.cc and model_service_impl.cc:
same checks, same status codes (TensorFlow's error codes are gRPC's), messages cut at
1024 characters with "...TRUNCATED" (grpc_status_util.cc), responses with the `model_spec`
TF Serving fills in, and the client's deadline as the run's deadline. They share the
version manager and the batch scheduler with the REST API.

`--enable_grpc_healthcheck_service` adds the standard grpc.health.v1.Health/Check, SERVING
for "", "ModelService" and "PredictionService" (written by hand: two tiny messages).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import errors, logs, prediction_service, servable, status, tensor_proto

logger = logging.getLogger(__name__)

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Requests above this many bytes are converted off the event loop.
INLINE_CONVERT_BYTES = 256 * 1024
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HEALTHY_SERVICES = ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService")
HEALTHY_SERVICE_NAMES = ("", "ModelService", "PredictionService")


def parse_channel_arguments(text: str) -> list[tuple[str, Any]]:
    """--grpc_channel_arguments: "k=v,k=v" with integer values as ints (server.cc).

    Raises:
      errors.UserError: an argument without "=".
    """
    arguments = []
    for item in filter(None, text.split(",")):
        key, separator, value = item.partition("=")
        if not separator:
            raise errors.UserError(
                f"--grpc_channel_arguments: {item!r} is not key=value (e.g. "
                "grpc.max_connection_age_ms=2000)"
            )
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments


def _spec(model_spec) -> prediction_service.ModelSpec:
    choice = model_spec.WhichOneof("version_choice")
    return prediction_service.ModelSpec(
        name=model_spec.name,
        version=model_spec.version.value if choice == "version" else None,
        label=model_spec.version_label if choice == "version_label" else None,
        signature_name=model_spec.signature_name,
    )


def _fill_model_spec(target, name: str, signature_name: str | None, version: int) -> None:
    """util.cc MakeModelSpec: the name asked, the signature (defaulted), the version run."""
    target.name = name
    if signature_name is not None:
        target.signature_name = signature_name or servable.DEFAULT_SIGNATURE
    target.version.value = version


class Servicers:
    """What the gRPC servicers share: the service, the requests in flight, and how a
    handler's outcome becomes TF Serving's gRPC status, its metrics and an access line."""

    def __init__(self, service: prediction_service.PredictionService):
        self.service = service
        self.in_flight = 0
        self.access = logs.access_logger()

    async def run(self, context, api: str, model_name: str, body: Callable) -> Any:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            response = await body()
            outcome, details = status.Code.OK, None
        except status.ServingError as error:
            outcome, details = error.code, error.message
        except Exception as error:  # a bug: logged with its traceback, reported without it
            logger.exception("Internal error serving gRPC %s", api)
            outcome = status.Code.INTERNAL
            details = status.bounded(f"Internal error: {type(error).__name__}: {error}")
        finally:
            self.in_flight -= 1
        seconds = time.perf_counter() - started
        if api in ("Predict", "Classify", "Regress"):
            self.service.record(model_name, api, "GRPC", outcome, seconds)
        self.access.info(
            '%s "gRPC %s %s" %s %.1f ms',
            context.peer(),
            api,
            status.bounded(model_name)[:200],
            status.Code(outcome).name,
            seconds * 1000,
        )
        if details is not None:
            await context.abort(_GRPC_CODES[int(outcome)], details)
        return response


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


async def _off_loop_if_large(request, function: Callable, *arguments) -> Any:
    if request.ByteSize() > INLINE_CONVERT_BYTES:
        return await asyncio.get_running_loop().run_in_executor(None, function, *arguments)
    return function(*arguments)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over a PredictionService."""

    def __init__(self, servicers: Servicers, tensor_content: bool):
        self.service = servicers.service
        self.tensor_content = tensor_content
        self.handlers = servicers

    async def Predict(self, request: predict_pb2.PredictRequest, context):
        async def body():
            spec = _spec(request.model_spec)
            model = self.service.resolve(spec)
            inputs = await _off_loop_if_large(request, _inputs_of, request)
            outputs = await self.service.predict(
                model, spec.signature_name, inputs, request.output_filter, _deadline(context)
            )
            return await _off_loop_if_large(request, self._response, request, model, outputs)

        return await self.handlers.run(context, "Predict", request.model_spec.name, body)

    def _response(self, request, model, outputs) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
        _fill_model_spec(
            response.model_spec,
            request.model_spec.name,
            request.model_spec.signature_name,
            model.version,
        )
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tensor_proto.from_array(value, self.tensor_content))
        return response

    async def Classify(self, request: classification_pb2.ClassificationRequest, context):
        async def body():
            spec = _spec(request.model_spec)
            model = self.service.resolve(spec)
            examples = servable.serialized_examples(request.input)
            labels, scores = await self.service.classify(
                model, spec.signature_name, examples, _deadline(context)
            )
            response = classification_pb2.ClassificationResponse()
            _fill_model_spec(
                response.model_spec, spec.name, request.model_spec.signature_name, model.version
            )
            _fill_classifications(response.result, len(examples), labels, scores)
            return response

        return await self.handlers.run(context, "Classify", request.model_spec.name, body)

    async def Regress(self, request: regression_pb2.RegressionRequest, context):
        async def body():
            spec = _spec(request.model_spec)
            model = self.service.resolve(spec)
            examples = servable.serialized_examples(request.input)
            values = await self.service.regress(
                model, spec.signature_name, examples, _deadline(context)
            )
            response = regression_pb2.RegressionResponse()
            _fill_model_spec(
                response.model_spec, spec.name, request.model_spec.signature_name, model.version
            )
            for value in values.tolist():
                response.result.regressions.add(value=value)
            return response

        return await self.handlers.run(context, "Regress", request.model_spec.name, body)

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        async def body():
            names = {task.model_spec.name for task in request.tasks}
            if "" in names:
                raise status.invalid_argument("Found ModelSpec with an empty model name.")
            if len(names) != 1:
                raise status.invalid_argument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                    if names
                    else "Must provide at least one task."
                )
            first = request.tasks[0].model_spec
            model = self.service.resolve(_spec(first))
            examples = servable.serialized_examples(request.input)
            tasks = [(task.model_spec.signature_name, task.method_name) for task in request.tasks]
            results = await self.service.multi_inference(model, tasks, examples, _deadline(context))
            response = inference_pb2.MultiInferenceResponse()
            for task, (kind, result) in zip(request.tasks, results, strict=True):
                item = response.results.add()
                _fill_model_spec(
                    item.model_spec,
                    task.model_spec.name,
                    task.model_spec.signature_name,
                    model.version,
                )
                if kind == "classification":
                    _fill_classifications(item.classification_result, len(examples), *result)
                else:
                    for value in result.tolist():
                        item.regression_result.regressions.add(value=value)
            return response

        return await self.handlers.run(context, "MultiInference", "", body)

    async def GetModelMetadata(self, request, context):
        async def body():
            if not request.HasField("model_spec"):
                raise status.invalid_argument("Missing ModelSpec")
            return self.service.metadata(_spec(request.model_spec), request.metadata_field)

        return await self.handlers.run(context, "GetModelMetadata", "", body)


def _inputs_of(request: predict_pb2.PredictRequest) -> dict:
    return {alias: tensor_proto.to_array(proto) for alias, proto in request.inputs.items()}


def _fill_classifications(result, count: int, labels, scores) -> None:
    rows = labels if labels is not None else scores
    for row in range(count):
        classifications = result.classifications.add()
        for column in range(len(rows[row])):
            item = classifications.classes.add()
            if labels is not None:
                item.label = labels[row][column].decode("utf-8", errors="replace")
            if scores is not None:
                item.score = scores[row][column]


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: status, and config reloads (ServerCore::ReloadConfig)."""

    def __init__(self, servicers: Servicers):
        self.service = servicers.service
        self.handlers = servicers

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        async def body():
            if not request.HasField("model_spec"):
                raise status.invalid_argument("Missing ModelSpec")
            return self.service.status(_spec(request.model_spec))

        return await self.handlers.run(context, "GetModelStatus", "", body)

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context
    ):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            for index, config in enumerate(request.config.model_config_list.config):
                logger.info(
                    "Config entry index : %d path : %s name : %s platform : %s",
                    index,
                    config.base_path,
                    config.name,
                    config.model_platform,
                )
            await asyncio.get_running_loop().run_in_executor(
                None, self.service.core.reload_config, request.config
            )
        except status.ServingError as error:
            logger.error("ReloadConfig failed: %s", error.message)
            response.status.error_code = int(error.code)
            response.status.error_message = error.message
            await context.abort(_GRPC_CODES[int(error.code)], error.message)
        for name in request.metric_names:  # TF Serving reports increases of these
            response.metric.add(name=name, int64_value_increase=0)
        return response


def _health_check_handler() -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health/Check: SERVING (1) for the model server's services."""

    def service_of(data: bytes) -> str:
        # HealthCheckRequest { string service = 1; }: tag 0x0a, varint length, bytes.
        if not data:
            return ""
        if data[0] != 0x0A:
            raise ValueError("not a HealthCheckRequest")
        length, shift, index = 0, 0, 1
        while True:
            byte = data[index]
            length |= (byte & 0x7F) << shift
            index += 1
            shift += 7
            if not byte & 0x80:
                break
        return data[index : index + length].decode("utf-8")

    async def check(service_name: str, context) -> bytes:
        if service_name not in HEALTHY_SERVICES + HEALTHY_SERVICE_NAMES:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08\x01"  # HealthCheckResponse { status: SERVING }

    handler = grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=service_of, response_serializer=lambda data: data
    )
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})


async def start_server(
    service: prediction_service.PredictionService,
    *,
    addresses: Sequence[str],
    channel_arguments: Sequence[tuple[str, Any]],
    max_request_bytes: int,
    tensor_content: bool,
    health_check: bool,
) -> tuple[grpc.aio.Server, Servicers, list[int]]:
    """Starts the gRPC server on `addresses` ("host:port" or "unix:path").

    Returns the server, its servicers' shared state and the port bound for each address
    (0 for a Unix socket).

    Raises:
      errors.UserError: an address that cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", -1),
        *channel_arguments,
    ]
    server = grpc.aio.server(options=options)
    servicers = Servicers(service)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(servicers, tensor_content), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(servicers), server)
    if health_check:
        server.add_generic_rpc_handlers((_health_check_handler(),))
    ports = []
    for address in addresses:
        try:
            ports.append(server.add_insecure_port(address))
        except RuntimeError as error:
            raise errors.UserError(f"cannot listen for gRPC on {address}: {error}") from None
    await server.start()
    return server, servicers, ports
