"""`happysad serve` over REST, end to end: TF Serving's API, formats and errors, start and stop.

Requests are modelled on tensorflow_serving/g3doc/api_rest.md and on the behaviours TF
Serving's integration suite (tensorflow_model_server_test.py) checks; the servers run in
this process on free loopback ports, against SavedModels the tests export.
"""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import numpy as np
import pytest

from pipeline import cli
from serving import client, errors, status
from tests.serving.conftest import (
    IMAGE_SIZE,
    encode_image,
    free_port,
    install_version,
    start,
)

BRIGHT, DARK = encode_image(220), encode_image(30, image_format="JPEG")


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def call(url: str, body=None, method: str | None = None, raw: bytes | None = None, headers=None):
    """(HTTP status, JSON answer) of one request; `body` is sent as JSON."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
            return response.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory, exported_models):
    base_path = tmp_path_factory.mktemp("image_base")
    install_version(exported_models["image"], base_path, 1)
    config_dir = tmp_path_factory.mktemp("image_config")
    batching = write(config_dir / "batching.txt", "batch_timeout_micros { value: 50000 }")
    monitoring = write(config_dir / "monitoring.txt", "prometheus_config { enable: true }")
    handle = start(
        model_name="happysad",
        model_base_path=str(base_path),
        enable_batching=True,
        batching_parameters_file=batching,
        monitoring_config_file=monitoring,
        file_system_poll_wait_seconds=1,
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def tf1_server(tmp_path_factory, exported_models):
    base_path = tmp_path_factory.mktemp("tf1_base")
    install_version(exported_models["tf1"], base_path, 123)
    with start(model_name="half", model_base_path=str(base_path)) as handle:
        yield handle


@pytest.fixture(scope="module")
def tf2_server(tmp_path_factory, exported_models):
    """TF Serving's test layout: the version folder is named 00000123."""
    base_path = tmp_path_factory.mktemp("tf2_base")
    install_version(exported_models["tf2"], base_path, "00000123")
    with start(model_name="default", model_base_path=str(base_path)) as handle:
        yield handle


@pytest.fixture
def model_url(image_server):
    return f"{image_server.url}/v1/models/happysad"


# -- status and metadata -------------------------------------------------------------------


def test_model_status(model_url):
    assert call(model_url) == (
        200,
        {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        },
    )
    code, document = call(model_url + "/versions/1")
    assert code == 200 and document["model_version_status"][0]["version"] == "1"


def test_version_folders_keep_their_name(tf2_server):
    """A version in 00000123/ is version 123 and is loaded from 00000123/."""
    url = f"{tf2_server.url}/v1/models/default"
    code, document = call(url)
    assert code == 200
    assert [(item["version"], item["state"]) for item in document["model_version_status"]] == [
        ("123", "AVAILABLE")
    ]
    assert call(url + "/versions/123:predict", {"instances": [[1.0]]}) == (
        200,
        {"predictions": [[2.5]]},
    )


@pytest.mark.parametrize(
    "path, code, message",
    [
        ("/v1/models/other", 404, "Could not find any versions of model other"),
        ("/v1/models/happysad/versions/7", 404, "Could not find version 7 of model happysad"),
        ("/v1/models", 400, "Missing model name in request."),
        ("/v1/models/happysad/versions/x", 400, "Malformed request: GET"),
        ("/v1/models/happysad/labels/stable/metadata", 400, "Unrecognized servable version label"),
        ("/v1/models/other/metadata", 404, r"Servable not found for request: Latest(other)"),
    ],
)
def test_status_errors(image_server, path, code, message):
    answer_code, document = call(image_server.url + path)
    assert answer_code == code
    assert list(document) == ["error"] and message in document["error"]


def test_metadata_lists_signatures_from_the_saved_model(model_url):
    code, document = call(model_url + "/metadata")
    assert code == 200
    assert document["model_spec"] == {"name": "happysad", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    image_input = default["inputs"]["image_bytes"]
    assert image_input["dtype"] == "DT_STRING"
    assert [dim["size"] for dim in image_input["tensor_shape"]["dim"]] == ["-1"]
    assert {name: spec["dtype"] for name, spec in default["outputs"].items()} == {
        "happy_probability": "DT_FLOAT",
        "label": "DT_STRING",
        "class_id": "DT_INT64",
    }
    images_shape = signatures["predict_images"]["inputs"]["images"]["tensor_shape"]["dim"]
    assert [dim["size"] for dim in images_shape] == ["-1", str(IMAGE_SIZE), str(IMAGE_SIZE), "3"]
    assert call(model_url + "/versions/1/metadata")[0] == 200


# -- predict -------------------------------------------------------------------------------


def test_predict_row_format_with_b64_images(model_url):
    code, document = call(model_url + ":predict", {"instances": [b64(BRIGHT), b64(DARK)]})
    assert code == 200
    bright, dark = document["predictions"]
    assert bright["label"] == "happy" and bright["class_id"] == 1
    assert dark["label"] == "sad" and dark["class_id"] == 0
    assert bright["happy_probability"] == pytest.approx(220 / 255, abs=1e-3)
    assert dark["happy_probability"] == pytest.approx(30 / 255, abs=0.02)


def test_b64_with_line_breaks_is_decoded_like_tf_serving(model_url):
    """base64.encodebytes (and `base64` without -w0) break lines every 76 characters."""
    wrapped = base64.encodebytes(BRIGHT).decode()
    assert "\n" in wrapped
    code, document = call(model_url + ":predict", {"instances": [{"b64": wrapped}]})
    assert code == 200 and document["predictions"][0]["label"] == "happy"


def test_predict_columnar_format(model_url):
    body = {"signature_name": "serving_default", "inputs": [b64(BRIGHT)]}
    code, document = call(model_url + ":predict", body)
    assert code == 200
    outputs = document["outputs"]
    assert outputs["label"] == ["happy"] and outputs["class_id"] == [1]
    assert outputs["happy_probability"][0] == pytest.approx(220 / 255, abs=1e-3)


def test_predict_with_float_pixels_in_both_formats(model_url):
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 200.0).tolist()
    row = call(model_url + ":predict", {"signature_name": "predict_images", "instances": [pixels]})
    columnar = call(
        model_url + ":predict", {"signature_name": "predict_images", "inputs": [pixels]}
    )
    assert row[0] == columnar[0] == 200
    assert row[1]["predictions"][0]["label"] == "happy"
    assert columnar[1]["outputs"]["happy_probability"] == [pytest.approx(200 / 255, abs=1e-6)]


def test_predict_named_inputs_and_bytes_outputs(model_url):
    instances = [
        {"a": [1.5, 2.0], "b": 3, "tag": "foo"},
        {"a": [-9.0, 0.0], "b": 1, "tag": b64(b"\x00bin")},
    ]
    code, document = call(
        model_url + ":predict", {"signature_name": "multi_io", "instances": instances}
    )
    assert code == 200
    first, second = document["predictions"]
    assert first == {"total": 6.5, "positive": True, "marker": 1, "tag_bytes": b64(b"foo!")}
    assert second["positive"] is False and second["tag_bytes"] == b64(b"\x00bin!")

    columnar = {"a": [[1.0, 1.0]], "b": [1], "tag": ["x"]}
    code, document = call(
        model_url + ":predict", {"signature_name": "multi_io", "inputs": columnar}
    )
    assert code == 200 and document["outputs"]["total"] == [3.0]
    assert document["outputs"]["tag_bytes"] == [b64(b"x!")]


def test_outputs_without_a_batch_dimension(model_url):
    body = {"signature_name": "scalar_stats", "inputs": [1.0, 2.0, 6.0]}
    assert call(model_url + ":predict", body) == (200, {"outputs": {"count": 3, "mean": 3.0}})
    body = {"signature_name": "scalar_stats", "instances": [1.0, 2.0]}
    code, document = call(model_url + ":predict", body)
    assert code == 400 and "has no shape information" in document["error"]


def test_tensors_are_fed_as_sent_whatever_the_declared_shape(tf2_server):
    """TF Serving checks input names, not shapes: x of shape [3] for a [-1, 1] signature."""
    url = f"{tf2_server.url}/v1/models/default:predict"
    assert call(url, {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
    assert call(url, {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_version_specific_and_case_insensitive_paths(image_server, model_url):
    body = {"instances": [b64(BRIGHT)]}
    assert call(model_url + "/versions/1:predict", body)[0] == 200
    code, document = call(model_url + "/versions/9:predict", body)
    assert code == 404
    assert document == {"error": "Servable not found for request: Specific(happysad, 9)"}
    assert call(f"{image_server.url}/V1/MODELS/happysad:PREDICT", body)[0] == 200
    code, document = call(f"{image_server.url}/v1/models/nope:predict", body)
    assert (code, document["error"]) == (404, "Servable not found for request: Latest(nope)")


def test_classify_and_regress_on_a_tf1_model_like_the_api_document(tf1_server):
    url = f"{tf1_server.url}/v1/models/half"
    assert call(url + ":predict", {"instances": [1.0, 2.0, 5.0]}) == (
        200,
        {"predictions": [3.5, 4.0, 5.5]},
    )
    regress = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert call(url + ":regress", regress) == (200, {"results": [3.5, 4.0]})
    classify = {
        "signature_name": "tensorflow/serving/classify",
        "context": {"unused": "shared"},
        "examples": [{"x": 0.0}, {"x": 2.0}],
    }
    code, document = call(url + ":classify", classify)
    assert code == 200
    (first, second) = document["results"]
    assert [label for label, _ in first] == ["happy", "sad"]
    assert first[0][1] == pytest.approx(0.5) and second[0][1] == pytest.approx(0.8807971)
    code, document = call(
        url + ":regress", {"signature_name": "tensorflow/serving/regress", "examples": [{"y": 1.0}]}
    )
    assert code == 400 and document["error"]


def test_tf2_classify_and_regress_need_no_method_names(tf2_server):
    """TF2 exports name every signature "predict"; TF Serving checks method names only with
    --enable_signature_method_name_check."""
    url = f"{tf2_server.url}/v1/models/default"
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert call(url + ":classify", body) == (200, {"results": [[["", 3.0]]]})
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert call(url + ":regress", body) == (200, {"results": [3.0]})


def test_method_names_are_checked_when_asked(tmp_path, exported_models):
    install_version(exported_models["tf2"], tmp_path, 1)
    with start(model_base_path=str(tmp_path), enable_signature_method_name_check=True) as handle:
        body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
        code, document = call(f"{handle.url}/v1/models/default:classify", body)
        assert code == 400
        assert document["error"] == (
            "Expected classification signature method_name to be tensorflow/serving/classify. "
            "Was: tensorflow/serving/predict"
        )


def test_classify_needs_a_classification_shaped_signature(model_url):
    code, document = call(model_url + ":classify", {"examples": [{"x": 1.0}]})
    assert code == 400 and document["error"] == "Expected one or two output Tensors, found 3"
    code, document = call(
        model_url + ":regress", {"signature_name": "nope", "examples": [{"x": 1.0}]}
    )
    assert (code, document["error"]) == (400, "No signature was found with the name: nope")


# -- errors and malformed input ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "JSON Parse error"),
        (b"", "JSON Parse error: The document is empty"),
        (b'["a list"]', "Is not object"),
        (b'{"instances": [{"b64": "@@@"}]}', "Unable to base64 decode"),
        (b'{"instancez": []}', "Missing 'inputs' or 'instances' key"),
        (b'{"instances": [{"wrong_key": "x"}]}', "does not have named input: wrong_key"),
        (b'{"instances": [1.5]}', "is not of expected type: string"),
        (
            b'{"signature_name": "nope", "instances": [1]}',
            'Serving signature name: "nope" not found',
        ),
        (b'{"signature_name": 5, "instances": [1]}', "'signature_name' key must be a string"),
    ],
)
def test_malformed_requests_are_400_and_leave_the_server_healthy(model_url, raw, message):
    code, document = call(model_url + ":predict", raw=raw, method="POST")
    assert code == 400
    assert list(document) == ["error"] and message in document["error"]
    assert "Traceback" not in document["error"]
    assert call(model_url + ":predict", {"instances": [b64(BRIGHT)]})[0] == 200


def test_non_image_bytes_fail_alone_within_a_batch(model_url):
    async def main():
        async with aiohttp.ClientSession() as session:

            async def post(image):
                async with session.post(
                    model_url + ":predict", json={"instances": [b64(image)]}
                ) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*(post(image) for image in [BRIGHT, b"not an image"] * 4))

    answers = asyncio.run(main())
    assert [code for code, _ in answers] == [200, 400] * 4
    error = answers[1][1]["error"]
    assert "Unknown image file format" in error and "Detected at node" not in error


def test_oversized_body_is_refused_with_413(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    with start(
        model_name="happysad", model_base_path=str(tmp_path), max_request_bytes=10_000
    ) as handle:
        url = f"{handle.url}/v1/models/happysad:predict"
        huge = {"instances": [b64(os.urandom(20_000))]}
        code, document = call(url, huge)
        assert code == 413 and "--max_request_bytes" in document["error"]
        assert call(url, {"instances": [b64(BRIGHT)]})[0] == 200


def test_wrong_methods_and_paths(image_server, model_url):
    assert call(model_url + ":predict")[0] == 400  # GET on a POST endpoint
    code, document = call(model_url, method="PUT", raw=b"{}")
    assert (code, document["error"]) == (400, "Malformed request: PUT /v1/models/happysad")
    code, document = call(model_url + ":explain", {"instances": [1]})
    assert code == 400 and "Malformed request: POST" in document["error"]
    code, document = call(image_server.url + "/elsewhere")
    assert code == 404 and document == {"error": "Not found: GET /elsewhere"}


def test_overload_answers_503_with_tf_servings_message(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    batching = write(
        tmp_path / "batching.txt",
        "max_batch_size { value: 64 } max_enqueued_batches { value: 1 } "
        "num_batch_threads { value: 1 }",
    )
    images = [b64(BRIGHT)] * 64
    with start(
        model_name="happysad",
        model_base_path=str(tmp_path),
        enable_batching=True,
        batching_parameters_file=batching,
    ) as handle:
        url = f"{handle.url}/v1/models/happysad:predict"

        async def main():
            async with aiohttp.ClientSession() as session:

                async def post():
                    async with session.post(url, json={"instances": images}) as response:
                        return response.status, response.headers, await response.json()

                return await asyncio.gather(*(post() for _ in range(12)))

        answers = asyncio.run(main())
        codes = sorted(code for code, _, _ in answers)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        headers, refused = next((h, document) for code, h, document in answers if code == 503)
        assert refused["error"].startswith(
            "The batch scheduling queue to which this task was submitted is full; currently 1 "
            "batches enqueued and max_enqueued_batches is 1"
        )
        assert headers["Retry-After"] == "1"
        assert call(url, {"instances": [b64(BRIGHT)]})[0] == 200


def test_a_request_larger_than_the_batch_size_is_refused_with_tf_servings_message(image_server):
    """Batching on with TF Serving's default max_batch_size (1000)."""
    url = f"{image_server.url}/v1/models/happysad:predict"
    pixels = np.zeros((1001, IMAGE_SIZE, IMAGE_SIZE, 3)).tolist()
    code, document = call(url, {"signature_name": "predict_images", "instances": pixels})
    assert (code, document) == (
        400,
        {"error": "Task size 1001 is larger than maximum input batch size 1000"},
    )


def test_deadline_exceeded_is_504(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    with start(
        model_name="happysad", model_base_path=str(tmp_path), rest_api_timeout_in_ms=1
    ) as handle:
        url = f"{handle.url}/v1/models/happysad:predict"
        code, document = call(url, {"instances": [b64(BRIGHT)] * 200})
        assert (code, document) == (504, {"error": "Deadline Exceeded"})
        assert call(f"{handle.url}/v1/models/happysad")[0] == 200


def test_cors_headers_and_preflight(tmp_path, exported_models):
    install_version(exported_models["tf2"], tmp_path, 1)
    with start(model_base_path=str(tmp_path), rest_api_enable_cors_support=True) as handle:
        url = f"{handle.url}/v1/models/default:predict"
        preflight = urllib.request.Request(
            url, method="OPTIONS", headers={"Origin": "http://localhost:3000"}
        )
        with urllib.request.urlopen(preflight, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
        code, document = call(url, method="OPTIONS")
        assert (code, document) == (400, {"error": "Origin header is missing in CORS preflight"})
        with urllib.request.urlopen(
            urllib.request.Request(url, data=b'{"instances": [[1.0]]}'), timeout=10
        ) as response:
            assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"


# -- batching, metrics, readiness ----------------------------------------------------------


def test_concurrent_requests_are_batched_and_metrics_use_tf_servings_names(image_server, model_url):
    runs = image_server.metrics.wrapped_run_count
    before = runs.total()

    async def main():
        async with aiohttp.ClientSession() as session:

            async def post():
                async with session.post(
                    model_url + ":predict", json={"instances": [b64(BRIGHT)]}
                ) as r:
                    return r.status

            return await asyncio.gather(*(post() for _ in range(16)))

    assert asyncio.run(main()) == [200] * 16
    assert 1 <= runs.total() - before < 16

    metrics_url = image_server.url + "/monitoring/prometheus/metrics"
    text = urllib.request.urlopen(metrics_url).read().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="happysad",status="OK"}' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="happysad",API="predict"' in text
    assert ":tensorflow:serving:batching_session:queuing_latency_count" in text
    assert ':tensorflow:serving:model_warmup_latency_count{model_path="' in text


def test_metrics_are_served_only_when_the_monitoring_config_enables_them(tf1_server):
    code, document = call(tf1_server.url + "/monitoring/prometheus/metrics")
    assert code == 404 and "Not found" in document["error"]


def test_readiness_and_health(image_server):
    code, document = call(image_server.url + "/readyz")
    assert code == 200 and document["ready"] is True and document["models"] == {"happysad": ["1"]}
    assert call(image_server.url + "/healthz") == (200, {"status": "ok"})


# -- versions ------------------------------------------------------------------------------


def test_hot_loading_while_requests_flow_fails_nothing(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    body = {"signature_name": "multi_io", "instances": [{"a": [0.0, 0.0], "b": 0, "tag": ""}]}
    with start(
        model_name="happysad",
        model_base_path=str(tmp_path),
        enable_batching=True,
        file_system_poll_wait_seconds=1,
    ) as handle:
        url = f"{handle.url}/v1/models/happysad:predict"
        answers, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                code, document = call(url, body)
                answers.append(document["predictions"][0]["marker"] if code == 200 else code)

        workers = [threading.Thread(target=traffic) for _ in range(3)]
        for worker in workers:
            worker.start()
        while len(answers) < 10:
            time.sleep(0.01)
        install_version(exported_models["image_v2"], tmp_path, 2)
        deadline = time.monotonic() + 60
        while 2 not in answers[-5:] and time.monotonic() < deadline:
            time.sleep(0.05)
        count_after_swap = len(answers)
        while len(answers) < count_after_swap + 10:
            time.sleep(0.01)
        stop.set()
        for worker in workers:
            worker.join()

        assert set(answers) == {1, 2}, f"failed requests: {set(answers) - {1, 2}}"
        first_two = answers.index(2)
        assert all(marker == 2 for marker in answers[first_two + 5 :])
        states = client.model_status(handle.url, "happysad")["model_version_status"]
        assert [(s["version"], s["state"]) for s in states] == [("2", "AVAILABLE"), ("1", "END")]


# -- starting and stopping -----------------------------------------------------------------


def serve_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "serve", *arguments]


def test_cli_reports_a_missing_model_config_file_in_one_line(tmp_path, capsys):
    code = cli.main(["serve", f"--model_config_file={tmp_path / 'nowhere.txt'}"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("happysad serve: error: --model_config_file") and "\n" not in error


def test_an_initial_model_that_cannot_load_stops_the_server(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(status.ServingError, match="1 model\\(s\\) did not become available"):
        start(model_base_path=str(tmp_path), max_num_load_retries=0)
    process = subprocess.run(
        serve_command(
            f"--model_base_path={tmp_path}",
            "--port=0",
            f"--grpc_socket_path={tmp_path}/s",
            "--max_num_load_retries=0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 1
    assert "Failed to start server. Error: 1 model(s) did not become available" in process.stderr


def test_ports_open_only_once_the_initial_models_are_loaded(tmp_path, exported_models):
    port = free_port()
    process = subprocess.Popen(
        serve_command(
            f"--model_base_path={tmp_path}",
            f"--rest_api_port={port}",
            "--port=0",
            f"--grpc_socket_path={tmp_path}/grpc.sock",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stderr:  # started, and polling an empty base path
            if "No versions of servable default found" in line:
                break
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert not os.path.exists(tmp_path / "grpc.sock")
        install_version(exported_models["tf2"], tmp_path, 1)
        client.wait_until_ready(f"http://127.0.0.1:{port}", "default", timeout=120)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_sigterm_lets_the_request_in_flight_finish(tmp_path, exported_models):
    """A request waiting in a batch when SIGTERM arrives is still answered, then the server exits.

    The batch timeout (60 s) keeps the request queued until shutdown flushes the queue.
    """
    install_version(exported_models["image"], tmp_path, 1)
    batching = write(tmp_path / "batching.txt", "batch_timeout_micros { value: 60000000 }")
    port = free_port()
    command = serve_command(
        "--model_name=happysad",
        f"--model_base_path={tmp_path}",
        f"--rest_api_port={port}",
        "--port=0",
        f"--grpc_socket_path={tmp_path}/grpc.sock",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
        "--shutdown_drain_seconds=0",
    )
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        client.wait_until_ready(url, "happysad", timeout=120)
        answers = []
        request = threading.Thread(
            target=lambda: answers.append(
                call(f"{url}/v1/models/happysad:predict", {"instances": [b64(BRIGHT)]})
            )
        )
        request.start()
        time.sleep(1.0)
        assert not answers  # still waiting in its batch
        process.send_signal(signal.SIGTERM)
        request.join(timeout=60)
        assert answers and answers[0][0] == 200
        assert answers[0][1]["predictions"][0]["label"] == "happy"
        assert process.wait(timeout=60) == 0
        assert "Shutting down" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(errors.UserError, match="--grpc_channel_arguments"):
        start(model_base_path=str(tmp_path), grpc_channel_arguments="no_equals_sign")
