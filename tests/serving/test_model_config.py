"""--model_config_file: several models, version policies, labels, and reloads while serving."""

import json
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import errors, status
from tests.serving.conftest import install_version, start

MARKER_BODY = {"signature_name": "multi_io", "instances": [{"a": [0.0, 0.0], "b": 0, "tag": ""}]}


def model_config(models: dict[str, dict]) -> str:
    """A ModelServerConfig in text format: name → {base_path, versions, labels}."""
    entries = []
    for name, model in models.items():
        lines = [
            f'name: "{name}"',
            f'base_path: "{model["base_path"]}"',
            'model_platform: "tensorflow"',
        ]
        if "versions" in model:
            versions = " ".join(f"versions: {version}" for version in model["versions"])
            lines.append(f"model_version_policy {{ specific {{ {versions} }} }}")
        for label, version in model.get("labels", {}).items():
            lines.append(f'version_labels {{ key: "{label}" value: {version} }}')
        entries.append("  config {\n    " + "\n    ".join(lines) + "\n  }")
    return "model_config_list {\n" + "\n".join(entries) + "\n}\n"


def post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def marker(url: str) -> int:
    """Which export answered: the image models carry a marker (1 or 2) in `multi_io`."""
    code, document = post(url, MARKER_BODY)
    return document["predictions"][0]["marker"] if code == 200 else code


@pytest.fixture
def two_versions(tmp_path, exported_models):
    base_path = tmp_path / "image"
    install_version(exported_models["image"], base_path, 1)
    install_version(exported_models["image_v2"], base_path, 2)
    install_version(exported_models["tf2"], tmp_path / "half", "00000123")
    return tmp_path


def test_two_models_with_version_labels(two_versions):
    config = two_versions / "models.config"
    config.write_text(
        model_config(
            {
                "faces": {
                    "base_path": two_versions / "image",
                    "versions": [1, 2],
                    "labels": {"stable": 1, "canary": 2},
                },
                "half": {"base_path": two_versions / "half"},
            }
        )
    )
    with start(
        model_config_file=str(config), allow_version_labels_for_unavailable_models=True
    ) as handle:
        faces = f"{handle.url}/v1/models/faces"
        assert marker(f"{faces}/labels/stable:predict") == 1
        assert marker(f"{faces}/labels/canary:predict") == 2
        assert marker(f"{faces}:predict") == 2  # the latest of the specific versions
        assert marker(f"{faces}/versions/1:predict") == 1
        code, document = post(f"{faces}/labels/nightly:predict", MARKER_BODY)
        assert (code, document) == (400, {"error": "Unrecognized servable version label: nightly"})
        assert post(f"{handle.url}/v1/models/half:predict", {"instances": [[2.0]]}) == (
            200,
            {"predictions": [[3.0]]},
        )

        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(handle.grpc_address)
        )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "faces"
        request.model_spec.signature_name = "multi_io"
        request.model_spec.version_label = "stable"
        for name, value in (
            ("a", np.zeros((1, 2), np.float32)),
            ("b", np.zeros(1, np.int64)),
            ("tag", np.array([b""], object)),
        ):
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = stub.Predict(request, 20)
        assert response.model_spec.version.value == 1
        assert list(response.outputs["marker"].int_val) == [1]


def test_labels_on_versions_not_loaded_need_the_flag(two_versions):
    config = two_versions / "models.config"
    config.write_text(
        model_config(
            {"faces": {"base_path": two_versions / "image", "versions": [1], "labels": {"s": 1}}}
        )
    )
    with pytest.raises(status.ServingError) as error:
        start(model_config_file=str(config))
    assert error.value.message == (
        "Request to assign label to version 1 of model faces, which is not currently "
        "available for inference"
    )


def test_moving_a_label_while_requests_flow_fails_none(two_versions):
    """Both versions serve; the config file moves `stable` from 1 to 2; no request fails."""
    config = two_versions / "models.config"
    models = {"faces": {"base_path": two_versions / "image", "versions": [1, 2]}}
    config.write_text(model_config(models))
    with start(model_config_file=str(config), model_config_file_poll_wait_seconds=1) as handle:
        models["faces"]["labels"] = {"stable": 1}
        config.write_text(model_config(models))
        url = f"{handle.url}/v1/models/faces/labels/stable:predict"
        deadline = time.monotonic() + 60
        while marker(url) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)

        answers, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                answers.append(marker(url))

        workers = [threading.Thread(target=traffic) for _ in range(3)]
        for worker in workers:
            worker.start()
        while len(answers) < 10:
            time.sleep(0.01)
        models["faces"]["labels"] = {"stable": 2}
        config.write_text(model_config(models))
        while 2 not in answers[-5:] and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for worker in workers:
            worker.join()
    assert set(answers) == {1, 2}, f"failed requests: {set(answers) - {1, 2}}"
    first_two = answers.index(2)
    assert all(answer == 2 for answer in answers[first_two + 3 :])


def test_a_reloaded_config_serves_exactly_its_models(two_versions):
    config = two_versions / "models.config"
    config.write_text(model_config({"faces": {"base_path": two_versions / "image"}}))
    with start(model_config_file=str(config), model_config_file_poll_wait_seconds=1) as handle:
        assert marker(f"{handle.url}/v1/models/faces:predict") == 2
        config.write_text(model_config({"half": {"base_path": two_versions / "half"}}))
        deadline = time.monotonic() + 60
        while post(f"{handle.url}/v1/models/half:predict", {"instances": [[1.0]]})[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        code, document = post(f"{handle.url}/v1/models/faces:predict", MARKER_BODY)
        assert (code, document["error"]) == (404, "Servable not found for request: Latest(faces)")


def test_without_a_poll_period_the_config_file_is_read_once(two_versions):
    config = two_versions / "models.config"
    config.write_text(model_config({"faces": {"base_path": two_versions / "image"}}))
    with start(model_config_file=str(config)) as handle:
        config.write_text(model_config({"half": {"base_path": two_versions / "half"}}))
        time.sleep(2)
        assert marker(f"{handle.url}/v1/models/faces:predict") == 2


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "improperly formatted file",
            "Error parsing text-format tensorflow.serving.ModelServerConfig",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_platform: "tensorflow" } '
            'config { name: "a" base_path: "/y" model_platform: "tensorflow" } }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_platform: "tflite" } }',
            "Model a requests unsupported platform tflite",
        ),
    ],
)
def test_bad_config_files_are_refused(tmp_path, text, message):
    config = tmp_path / "models.config"
    config.write_text(text)
    with pytest.raises(errors.UserError, match=message):
        start(model_config_file=str(config))


def test_batching_and_monitoring_files_are_parsed_as_tf_servings_messages(tmp_path):
    (tmp_path / "batching.txt").write_text("max_batch_size { value: 0 }")
    with pytest.raises(errors.UserError, match="max_batch_size must be positive"):
        start(
            model_base_path=str(tmp_path),
            enable_batching=True,
            batching_parameters_file=str(tmp_path / "batching.txt"),
        )
    (tmp_path / "monitoring.txt").write_text("prometheus_config { enabled: true }")
    with pytest.raises(
        errors.UserError, match="Error parsing text-format tensorflow.serving.MonitoringConfig"
    ):
        start(
            model_base_path=str(tmp_path), monitoring_config_file=str(tmp_path / "monitoring.txt")
        )
