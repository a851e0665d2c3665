"""`happysad serve` over gRPC, through TF Serving's own stubs (tensorflow-serving-api).

The calls and checks follow TF Serving's integration suite (tensorflow_model_server_test.py):
Predict with and without an output filter, model_spec in every response, Classify, Regress
and MultiInference on TF1 and TF2 models, GetModelMetadata, GetModelStatus, the
"Servable not found" readiness probe, a Unix socket, channel arguments, and config reloads.
"""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import client
from tests.serving.conftest import encode_image, install_version, start

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def happysad_server(tmp_path_factory, happysad_model):
    """A real happysad export (warm-up file included), served with batching on."""
    base_path = tmp_path_factory.mktemp("happysad_base")
    install_version(happysad_model, base_path, 7)
    socket_path = tmp_path_factory.mktemp("socket") / "grpc.sock"
    with start(
        model_name="happysad",
        model_base_path=str(base_path),
        enable_batching=True,
        grpc_socket_path=str(socket_path),
        grpc_channel_arguments="grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,"
        "grpc.so_reuseaddr=1",
        enable_grpc_healthcheck_service=True,
    ) as handle:
        handle.socket_path = str(socket_path)
        yield handle


@pytest.fixture(scope="module")
def models_server(tmp_path_factory, exported_models):
    """The TF1 and TF2 half-plus-N models, and a Keras export, from a model config file."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, version in (("tf1", 123), ("tf2", "00000123"), ("keras", 1)):
        install_version(exported_models[name], root / name, version)
        paths[name] = str(root / name)
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
            for name, path in paths.items()
        )
        + "}\n"
    )
    with start(model_config_file=str(config)) as handle:
        yield handle


def prediction_stub(address: str):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))


def image_request(model: str, images: list[bytes], **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


# -- Predict on a real happysad export -------------------------------------------------------


def test_predict_answers_typed_fields_and_the_model_spec(happysad_server):
    stub = prediction_stub(happysad_server.grpc_address)
    request = image_request("happysad", [encode_image(230, size=64), encode_image(10, size=64)])
    response = stub.Predict(request, TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == ("happysad", 7)
    assert response.model_spec.signature_name == "serving_default"
    probabilities = response.outputs["happy_probability"]
    assert probabilities.dtype == types_pb2.DT_FLOAT and len(probabilities.float_val) == 2
    assert [dim.size for dim in probabilities.tensor_shape.dim] == [2]
    assert list(response.outputs["label"].string_val) in (
        [b"happy", b"happy"],
        [b"happy", b"sad"],
        [b"sad", b"happy"],
        [b"sad", b"sad"],
    )
    assert set(response.outputs) == {"happy_probability", "label", "class_id"}


def test_a_file_the_data_job_refuses_is_invalid_argument_with_its_reason(happysad_server):
    stub = prediction_stub(happysad_server.grpc_address)
    with pytest.raises(grpc.RpcError) as error:  # 16x16: under the data job's minimum side
        stub.Predict(image_request("happysad", [encode_image(100, size=16)]), TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too_small" in error.value.details()


def test_output_filter_and_its_errors(happysad_server):
    stub = prediction_stub(happysad_server.grpc_address)
    request = image_request("happysad", [encode_image(100, size=64)])
    request.output_filter.append("label")
    assert set(stub.Predict(request, TIMEOUT).outputs) == {"label"}
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("output tensor alias not found in signature: nope")


def test_the_same_model_answers_the_same_over_rest_and_grpc(happysad_server, tmp_path):
    image = tmp_path / "face.png"
    image.write_bytes(encode_image(180, size=64))
    over_rest = client.predict([str(image)], url=happysad_server.url, model="happysad")
    over_grpc = client.predict_grpc(
        [str(image)], target=happysad_server.grpc_address, model="happysad"
    )
    assert over_rest[0].label == over_grpc[0].label
    assert over_rest[0].probability == pytest.approx(over_grpc[0].probability, abs=1e-6)


def test_predict_over_the_unix_socket(happysad_server):
    stub = prediction_stub(f"unix:{happysad_server.socket_path}")
    response = stub.Predict(image_request("happysad", [encode_image(50, size=64)]), TIMEOUT)
    assert response.model_spec.version.value == 7


def test_missing_model_is_not_found_with_tf_servings_message(happysad_server):
    """TF Serving's integration tests probe readiness with exactly this request."""
    stub = prediction_stub(happysad_server.grpc_address)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == (
        "Servable not found for request: Latest(intentionally_missing_model)"
    )


@pytest.mark.parametrize(
    "change, code, message",
    [
        (lambda r: r.inputs.pop("image_bytes"), "INVALID_ARGUMENT", "input size does not match"),
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            "FAILED_PRECONDITION",
            'Serving signature key "nope" not found.',
        ),
        (lambda r: r.model_spec.version.__setattr__("value", 3), "NOT_FOUND", "Specific("),
        (
            lambda r: r.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0])),
            "INVALID_ARGUMENT",
            "Expects arg[0] to be string but float is provided",
        ),
    ],
)
def test_predict_errors_carry_tf_servings_codes(happysad_server, change, code, message):
    stub = prediction_stub(happysad_server.grpc_address)
    request = image_request("happysad", [encode_image(50, size=64)])
    change(request)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, TIMEOUT)
    assert error.value.code().name == code and message in error.value.details()


def test_corrupt_image_is_invalid_argument_and_long_messages_are_bounded(happysad_server):
    stub = prediction_stub(happysad_server.grpc_address)
    request = image_request("happysad", [b"x" * 5000])
    request.model_spec.signature_name = "s" * 5000
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, TIMEOUT)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details().endswith("...TRUNCATED")
    assert len(error.value.details()) == 1024 + len("...TRUNCATED")


def test_metadata_and_status(happysad_server):
    stub = prediction_stub(happysad_server.grpc_address)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "happysad"
    response = stub.GetModelMetadata(request, TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == ("happysad", 7)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) >= {"serving_default", "predict_images"}
    request.metadata_field[:] = ["graph"]
    with pytest.raises(grpc.RpcError, match="Metadata field graph is not supported"):
        stub.GetModelMetadata(request, TIMEOUT)

    models = model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(happysad_server.grpc_address)
    )
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "happysad"
    (version,) = models.GetModelStatus(status_request, TIMEOUT).model_version_status
    assert (version.version, version.state, version.status.error_code) == (
        7,
        get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        0,
    )


def test_health_check_service(happysad_server):
    channel = grpc.insecure_channel(happysad_server.grpc_address)
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    assert check(b"", timeout=TIMEOUT) == b"\x08\x01"  # SERVING
    model_service = b"\x0a\x0cModelService"  # HealthCheckRequest { service: "ModelService" }
    assert check(model_service, timeout=TIMEOUT) == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as error:
        check(b"\x0a\x03foo", timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


# -- Classify, Regress, MultiInference on TF1 and TF2 models ---------------------------------


def example_input(target, x: float) -> None:
    example = target.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(x)


@pytest.mark.parametrize(
    "model, signature, expected",
    [("tf1", "tensorflow/serving/regress", 4.0), ("tf2", "regress_x_to_y", 3.0)],
)
def test_regress(models_server, model, signature, expected):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    example_input(request, 2.0)
    response = prediction_stub(models_server.grpc_address).Regress(request, TIMEOUT)
    assert [item.value for item in response.result.regressions] == [expected]
    assert (response.model_spec.name, response.model_spec.signature_name) == (model, signature)
    assert response.model_spec.version.value == 123


def test_classify_tf2_signature_named_predict(models_server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tf2"
    request.model_spec.signature_name = "classify_x_to_y"
    example_input(request, 2.0)
    response = prediction_stub(models_server.grpc_address).Classify(request, TIMEOUT)
    (classes,) = response.result.classifications
    assert [(item.label, item.score) for item in classes.classes] == [("", 3.0)]


def test_multi_inference(models_server):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "tf2"
        task.model_spec.signature_name = signature
        task.method_name = method
    example_input(request, 2.0)
    response = prediction_stub(models_server.grpc_address).MultiInference(request, TIMEOUT)
    regression, classification = response.results
    assert regression.regression_result.regressions[0].value == 3.0
    assert classification.classification_result.classifications[0].classes[0].score == 3.0
    assert [result.model_spec.version.value for result in response.results] == [123, 123]


def test_predict_passes_tensors_as_sent(models_server):
    """x of shape [1] for TF2's [-1, 1] signature, and a Keras export fed a batch."""
    stub = prediction_stub(models_server.grpc_address)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf2"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
    request.output_filter.append("y")
    response = stub.Predict(request, TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.ones((2, 3), np.float32)))
    (output,) = stub.Predict(request, TIMEOUT).outputs.values()
    assert list(output.float_val) == [7.0, 7.0]


def test_tensor_content_serialization_when_asked(tmp_path, exported_models):
    install_version(exported_models["tf2"], tmp_path, 1)
    with start(
        model_base_path=str(tmp_path), enable_serialization_as_tensor_content=True
    ) as handle:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        output = prediction_stub(handle.grpc_address).Predict(request, TIMEOUT).outputs["y"]
        assert not output.float_val and tf.make_ndarray(output).tolist() == [[3.0]]


def test_reload_config_request_swaps_the_models(tmp_path, exported_models):
    install_version(exported_models["tf1"], tmp_path / "tf1", 1)
    install_version(exported_models["tf2"], tmp_path / "tf2", 1)
    with start(model_name="tf1", model_base_path=str(tmp_path / "tf1")) as handle:
        models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(handle.grpc_address))
        request = model_management_pb2.ReloadConfigRequest()
        model = request.config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = (
            "tf2",
            str(tmp_path / "tf2"),
            "tensorflow",
        )
        response = models.HandleReloadConfigRequest(request, TIMEOUT)
        assert response.status.error_code == 0
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "tf2"
        assert models.GetModelStatus(status_request, TIMEOUT).model_version_status[0].state == (
            get_model_status_pb2.ModelVersionStatus.AVAILABLE
        )
        stub = prediction_stub(handle.grpc_address)
        with pytest.raises(grpc.RpcError, match=r"Latest\(tf1\)"):
            stub.Predict(predict_pb2.PredictRequest(model_spec={"name": "tf1"}), TIMEOUT)

        bad = model_management_pb2.ReloadConfigRequest(
            config=model_server_config_pb2.ModelServerConfig()
        )
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(bad, TIMEOUT)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
