"""A client for TF Serving's REST and gRPC APIs (`happysad predict`), for this server and the real one.

REST uses only the documented API: `GET /v1/models/{model}[/versions/{v}]` for status,
`.../metadata`, and `POST ...:predict` with `{"b64": ...}` image bytes in the row format.
gRPC uses tensorflow-serving-api's PredictionServiceStub (Predict, GetModelMetadata) and
ModelServiceStub (GetModelStatus). Overload answers (REST 503/429, gRPC UNAVAILABLE and
RESOURCE_EXHAUSTED) are retried with exponential backoff; every call has a timeout.

    from serving import client
    client.wait_until_ready("http://localhost:8501", "happysad", timeout=60)
    for prediction in client.predict(["smile.jpg"], url="http://localhost:8501", model="happysad"):
        print(prediction.label, prediction.probability)
    client.predict_grpc(["smile.jpg"], target="localhost:8500", model="happysad")

`build_predict_request` and `parse_predict_response` are pure, for use with any HTTP stack.
"""

import asyncio
import base64
import dataclasses
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
import simple_parsing

from serving import errors

DEFAULT_URL = "http://localhost:8501"
DEFAULT_GRPC_TARGET = "localhost:8500"
DEFAULT_MODEL = "happysad"
DEFAULT_SIGNATURE = "serving_default"
HAPPY_LABEL = "happy"
RETRY_STATUSES = (429, 503)
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RETRIES = 4
BACKOFF_SECONDS = 0.25  # first retry delay; doubles each time, with jitter
MAX_BACKOFF_SECONDS = 8.0

logger = logging.getLogger(__name__)


class ServerError(errors.UserError):
    """The server answered with an error (its HTTP status or gRPC code, and message, kept)."""

    def __init__(self, message: str, http_status: int | None = None, grpc_code=None):
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's answer: the label and the model's probability of that label."""

    file: str
    label: str
    probability: float  # of `label`
    happy_probability: float

    def to_json(self) -> dict:
        return {"file": self.file, "label": self.label, "probability": round(self.probability, 6)}


# ---------------------------------------------------------------------------------------------
# Pure request building and response parsing


def model_url(url: str, model: str, version: int | None = None, verb: str = "") -> str:
    """`{url}/v1/models/{model}[/versions/{version}][{verb}]`, verb like ":predict"."""
    path = f"{url.rstrip('/')}/v1/models/{model}"
    if version is not None:
        path += f"/versions/{int(version)}"
    return path + verb


def build_predict_request(images: Sequence[bytes], signature_name: str = DEFAULT_SIGNATURE) -> dict:
    """The :predict body for encoded images: row format, one `{"b64": ...}` per image."""
    if not images:
        raise ValueError("no images to send")
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images],
    }


def parse_predict_response(document: Any, count: int) -> list[dict[str, Any]]:
    """The outputs of each image from a row-format :predict answer, as name → value dicts.

    A model with one output answers bare values, which come back as {"output": value}.

    Raises:
      ServerError: an `error` answer, or not one prediction per image.
    """
    if not isinstance(document, dict):
        raise ServerError(f"the server's answer is not a JSON object: {str(document)[:200]}")
    if "error" in document:
        raise ServerError(f"the server answered: {document['error']}")
    predictions = document.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != count:
        raise ServerError(
            f"expected {count} predictions in the server's answer, got "
            f"{len(predictions) if isinstance(predictions, list) else 'none'}"
        )
    return [item if isinstance(item, dict) else {"output": item} for item in predictions]


def to_prediction(file: str, outputs: dict[str, Any]) -> Prediction:
    """A Prediction from the happysad contract's outputs (`happy_probability`, `label`)."""
    if "happy_probability" not in outputs:
        raise ServerError(
            "the model's answer has no 'happy_probability' output "
            f"(it has {', '.join(sorted(outputs))}): is this the happysad model?"
        )
    happy = float(outputs["happy_probability"])
    label = outputs.get("label")
    if isinstance(label, dict) and "b64" in label:
        label = base64.b64decode(label["b64"]).decode("utf-8", errors="replace")
    label = str(label) if label is not None else ("happy" if happy >= 0.5 else "sad")
    probability = happy if label == HAPPY_LABEL else 1.0 - happy
    return Prediction(file=file, label=label, probability=probability, happy_probability=happy)


# ---------------------------------------------------------------------------------------------
# HTTP calls (async), with retries and timeouts


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_RETRIES,
) -> Any:
    """One JSON call; retries 503/429 with exponential backoff (honouring Retry-After)."""
    headers = {"Content-Type": "application/json"} if body is not None else None
    for attempt in range(retries + 1):
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                payload = await response.read()
                if response.status in RETRY_STATUSES and attempt < retries:
                    delay = _backoff(attempt, response.headers.get("Retry-After"))
                    logger.info("%s answered %d; retrying in %.2f s", url, response.status, delay)
                    await asyncio.sleep(delay)
                    continue
                return _decode(payload, response.status, url)
        except TimeoutError:  # before ClientConnectionError: ServerTimeoutError is both
            raise ServerError(
                f"no answer from the model server at {url} within {timeout:g} s"
            ) from None
        except aiohttp.ClientConnectionError as error:
            raise ServerError(f"cannot reach the model server at {url}: {_reason(error)}") from None
    raise AssertionError("unreachable")


def _decode(payload: bytes, http_status: int, url: str) -> Any:
    try:
        document = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        document = None
    if http_status >= 400:
        message = document.get("error") if isinstance(document, dict) else None
        message = message or payload[:200].decode("utf-8", errors="replace") or "no details"
        raise ServerError(f"the server answered {http_status}: {message}", http_status)
    if document is None:
        raise ServerError(f"the answer from {url} is not JSON: {payload[:200]!r}")
    return document


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), MAX_BACKOFF_SECONDS)
        except ValueError:
            pass
    delay = min(BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS)
    return delay * (0.5 + random.random() / 2)


def _reason(error: BaseException) -> str:
    cause = getattr(error, "os_error", None) or error.__cause__ or error
    number = getattr(cause, "errno", None)
    if number:
        return os.strerror(number)
    return str(cause) or type(cause).__name__


async def predict_async(
    images: Sequence[str | bytes],
    *,
    url: str = DEFAULT_URL,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    signature_name: str = DEFAULT_SIGNATURE,
    batch_size: int = 32,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_RETRIES,
    session: aiohttp.ClientSession | None = None,
) -> list[Prediction]:
    """Classifies images (file paths or encoded bytes), `batch_size` per request."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    names, contents = _read_images(images)
    endpoint = model_url(url, model, version, ":predict")
    owned = session is None
    session = session or aiohttp.ClientSession()
    try:
        predictions = []
        for start in range(0, len(contents), batch_size):
            chunk = contents[start : start + batch_size]
            body = orjson.dumps(build_predict_request(chunk, signature_name))
            document = await _request(
                session, "POST", endpoint, body=body, timeout=timeout, retries=retries
            )
            outputs = parse_predict_response(document, len(chunk))
            predictions += [
                to_prediction(name, item)
                for name, item in zip(names[start : start + batch_size], outputs, strict=True)
            ]
        return predictions
    finally:
        if owned:
            await session.close()


def _read_images(images: Sequence[str | bytes]) -> tuple[list[str], list[bytes]]:
    names, contents = [], []
    for index, image in enumerate(images):
        if isinstance(image, bytes | bytearray):
            names.append(f"<image {index}>")
            contents.append(bytes(image))
            continue
        path = _require_file(image)
        with open(path, "rb") as file:
            contents.append(file.read())
        names.append(path)
    if not contents:
        raise errors.UserError("no images given")
    return names, contents


def _require_file(image: str) -> str:
    """The path of an image file that exists, else a UserError that names it."""
    path = os.fspath(image)
    if os.path.isdir(path):
        raise errors.UserError(f"{path}: a folder, not an image file (give the files in it)")
    if not os.path.isfile(path):
        raise errors.UserError(f"{path}: no such image file")
    return path


async def _get(url: str, timeout: float, retries: int) -> dict:
    async with aiohttp.ClientSession() as session:
        return await _request(session, "GET", url, timeout=timeout, retries=retries)


# ---------------------------------------------------------------------------------------------
# Synchronous helpers


def _run(coroutine) -> Any:
    """Runs a coroutine to completion, also from code that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def predict(
    images: Sequence[str | bytes],
    url: str = DEFAULT_URL,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    **options: Any,
) -> list[Prediction]:
    """Classifies images (paths or encoded bytes); see `predict_async` for the options."""
    return _run(predict_async(images, url=url, model=model, version=version, **options))


def model_status(
    url: str = DEFAULT_URL,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_RETRIES,
) -> dict:
    """GET /v1/models/{model}[/versions/{v}]: `{"model_version_status": [...]}`."""
    return _run(_get(model_url(url, model, version), timeout, retries))


def model_metadata(
    url: str = DEFAULT_URL,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_RETRIES,
) -> dict:
    """GET .../metadata: the model spec and its signature defs."""
    return _run(_get(model_url(url, model, version) + "/metadata", timeout, retries))


def wait_until_ready(
    url: str = DEFAULT_URL,
    model: str = DEFAULT_MODEL,
    timeout: float = 60.0,
    poll_seconds: float = 0.2,
) -> dict:
    """Waits until a version of `model` is AVAILABLE; returns the model status.

    Works against TF Serving too (it asks the status API). While the server is still
    starting, refused connections and 404s count as "not yet".

    Raises:
      TimeoutError: nothing AVAILABLE within `timeout` seconds (the message says the last
        thing seen).
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            document = model_status(url, model, timeout=max(poll_seconds, 1.0), retries=0)
            states = [item.get("state") for item in document.get("model_version_status", [])]
            if "AVAILABLE" in states:
                return document
            last = f"versions are {states}"
        except ServerError as error:
            last = str(error)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"model {model} at {url} is not ready after {timeout:g} s: {last}")
        time.sleep(poll_seconds)


# ---------------------------------------------------------------------------------------------
# gRPC (tensorflow-serving-api's stubs)

GRPC_RETRY_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


def _grpc_call(method, request, timeout: float, retries: int, target: str):
    """One gRPC call; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with backoff."""
    import grpc

    for attempt in range(retries + 1):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code.name in GRPC_RETRY_CODES and attempt < retries:
                delay = _backoff(attempt, None)
                logger.info("%s answered %s; retrying in %.2f s", target, code.name, delay)
                time.sleep(delay)
                continue
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServerError(
                    f"no answer from the model server at {target} within {timeout:g} s",
                    grpc_code=code,
                ) from None
            if code == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or ""):
                raise ServerError(
                    f"cannot reach the model server at {target}: {error.details()}",
                    grpc_code=code,
                ) from None
            raise ServerError(
                f"the server answered {code.name}: {error.details()}", grpc_code=code
            ) from None
    raise AssertionError("unreachable")


def _model_spec(spec, model: str, version: int | None, signature_name: str = "") -> None:
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    if signature_name:
        spec.signature_name = signature_name


def predict_grpc(
    images: Sequence[str | bytes],
    target: str = DEFAULT_GRPC_TARGET,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    *,
    signature_name: str = DEFAULT_SIGNATURE,
    batch_size: int = 32,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_RETRIES,
) -> list[Prediction]:
    """Classifies images over gRPC (PredictionService.Predict), `batch_size` per call.

    The signature's one input (DT_STRING, the encoded images) is found through
    GetModelMetadata, so any such signature works, against this server or TF Serving.

    Raises:
      ServerError: an error status, a timeout, or a signature that does not take one
        string input.
    """
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving import tensor_proto

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    names, contents = _read_images(images)
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        input_name = _string_input(stub, target, model, version, signature_name, timeout, retries)
        predictions = []
        for start in range(0, len(contents), batch_size):
            chunk = contents[start : start + batch_size]
            request = predict_pb2.PredictRequest()
            _model_spec(request.model_spec, model, version, signature_name)
            request.inputs[input_name].CopyFrom(tensor_proto.from_array(_object_array(chunk)))
            response = _grpc_call(stub.Predict, request, timeout, retries, target)
            outputs = {
                alias: tensor_proto.to_array(proto) for alias, proto in response.outputs.items()
            }
            for index, name in enumerate(names[start : start + batch_size]):
                row = {alias: _item(value, index) for alias, value in outputs.items()}
                predictions.append(to_prediction(name, row))
        return predictions


def _string_input(stub, target, model, version, signature_name, timeout, retries) -> str:
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    _model_spec(request.model_spec, model, version)
    response = _grpc_call(stub.GetModelMetadata, request, timeout, retries, target)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def.get(signature_name or DEFAULT_SIGNATURE)
    if signature is None or len(signature.inputs) != 1:
        raise ServerError(
            f"signature {signature_name!r} of model {model} does not take one input "
            "(the encoded images)"
        )
    return next(iter(signature.inputs))


def _object_array(items: list[bytes]):
    import numpy as np

    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _item(value, index: int):
    item = value[index] if getattr(value, "ndim", 0) else value
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return item.item() if hasattr(item, "item") else item


def model_status_grpc(
    target: str = DEFAULT_GRPC_TARGET,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_RETRIES,
):
    """ModelService.GetModelStatus: a GetModelStatusResponse."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(request.model_spec, model, version)
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return _grpc_call(stub.GetModelStatus, request, timeout, retries, target)


# ---------------------------------------------------------------------------------------------
# `happysad predict`


@dataclasses.dataclass
class PredictOptions:
    """`happysad predict IMAGE...`: one JSON line per image (file, label, probability)."""

    images: list[str] = simple_parsing.field(
        positional=True, metavar="IMAGE", help="image files to classify"
    )
    server: str = simple_parsing.field(
        default="",
        help=f"REST URL (default {DEFAULT_URL}) or, with --grpc, gRPC host:port or unix:path "
        f"(default {DEFAULT_GRPC_TARGET})",
    )
    grpc: bool = simple_parsing.field(
        default=False, help="call TF Serving's gRPC API instead of REST"
    )
    model: str = simple_parsing.field(default=DEFAULT_MODEL, help="model name")
    model_version: int | None = simple_parsing.field(
        default=None, help="version to ask (default: the latest)"
    )
    signature_name: str = simple_parsing.field(
        default=DEFAULT_SIGNATURE, help="signature taking encoded images"
    )
    batch_size: int = simple_parsing.field(default=32, help="images per request")
    timeout: float = simple_parsing.field(
        default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for each answer"
    )
    retries: int = simple_parsing.field(
        default=DEFAULT_RETRIES,
        help="retries of an overloaded answer (503/UNAVAILABLE), with backoff",
    )
    output: str = simple_parsing.field(
        default="-", help="where the JSON lines go ('-': standard output)"
    )


def run(options: PredictOptions) -> dict:
    """Classifies the images and writes one JSON line each; returns a summary.

    A line is `{"file", "label", "probability"}`, or `{"file", "error"}` for an image the
    server refused (REST 400 / gRPC INVALID_ARGUMENT: not an image, corrupt, too large, ...):
    a refused request is sent again one image at a time, so one bad file costs only its own
    line. Lines go to standard output as each request is answered; an `--output` file is
    written aside and renamed once complete. The summary's "refused" counts the error lines.

    Raises:
      UserError: a missing image file, an unreachable server, or any other error answer.
    """
    common = dict(
        model=options.model,
        version=options.model_version,
        signature_name=options.signature_name,
        timeout=options.timeout,
        retries=options.retries,
    )
    if options.grpc:
        target = options.server or DEFAULT_GRPC_TARGET

        def call(paths):
            return predict_grpc(paths, target=target, batch_size=len(paths), **common)

    else:
        url = options.server or DEFAULT_URL

        def call(paths):
            return predict(paths, url=url, batch_size=len(paths), **common)

    if options.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    paths = [_require_file(image) for image in options.images]  # all, before any request
    if not paths:
        raise errors.UserError("no images given")
    to_stdout = options.output == "-"
    lines: list[str] = []
    counts: dict[str, int] = {}
    for start in range(0, len(paths), options.batch_size):
        answers = _answers(paths[start : start + options.batch_size], call)
        for answer in answers:
            key = "refused" if "error" in answer else answer["label"]
            counts[key] = counts.get(key, 0) + 1
        batch = [orjson.dumps(answer).decode("utf-8") + "\n" for answer in answers]
        if to_stdout:
            sys.stdout.write("".join(batch))  # the command's output, not a log line
            sys.stdout.flush()
        else:
            lines += batch
    if not to_stdout:
        partial = f"{options.output}.partial"
        with open(partial, "w", encoding="utf-8") as file:
            file.write("".join(lines))
        os.replace(partial, options.output)
    refused = counts.pop("refused", 0)
    return {"images": len(paths), "labels": counts, "refused": refused, "output": options.output}


def _answers(paths: list[str], call) -> list[dict]:
    """One dict per path: its prediction, or {"file", "error"} where the server refused it."""
    try:
        return [prediction.to_json() for prediction in call(paths)]
    except ServerError as error:
        if not is_refusal(error):
            raise
        if len(paths) == 1:
            return [{"file": paths[0], "error": refusal_reason(str(error))}]
    return [answer for path in paths for answer in _answers([path], call)]


def is_refusal(error: ServerError) -> bool:
    """Whether the server refused the request's content (REST 400, gRPC INVALID_ARGUMENT)."""
    return error.http_status == 400 or getattr(error.grpc_code, "name", "") == "INVALID_ARGUMENT"


def refusal_reason(message: str) -> str:
    """One line of a refusal: the failed assertion's text, or the error's first line.

    "the server answered 400: assertion failed: [not_an_image: the content is not an
    image]\n\t [[{{node ...}}]]" -> "not_an_image: the content is not an image" (the text TF's
    tf.debugging.Assert prints between brackets); a decoder's own error keeps its first line,
    e.g. "jpeg::Uncompress failed. Invalid JPEG data or crop window.".
    """
    text = message
    if text.startswith("the server answered "):  # ServerError's own words before the server's
        text = text.split(": ", 1)[-1]
    marker = "assertion failed: ["
    if marker in text:
        inside = text[text.index(marker) + len(marker) :].splitlines()[0]
        return inside.split("]", 1)[0].strip()
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("[[")
    ]
    return lines[0] if lines else text.strip()


class _Parser(simple_parsing.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None, prog: str = "happysad predict") -> int:
    """Entry point of `happysad predict`; 2 with one line on stderr for any error."""
    parser = _Parser(
        prog=prog,
        description="Classify images with a TF Serving model server (REST or gRPC).",
        allow_abbrev=False,
        add_option_string_dash_variants=simple_parsing.DashVariant.UNDERSCORE,
        add_config_path_arg=False,
    )
    parser.add_arguments(PredictOptions, dest="options")
    options = parser.parse_args(list(sys.argv[1:] if argv is None else argv)).options
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        summary = run(options)
    except (errors.UserError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if summary["refused"]:
        print(
            f"{prog}: error: the server refused {summary['refused']} of {summary['images']} "
            "images (each has a line with its reason)",
            file=sys.stderr,
        )
        return 2
    return 0
